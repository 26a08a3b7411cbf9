"""The heavy half of `kubetasks dashboard` (uvicorn, the app, the reviews' HTTP client), imported only when the
dashboard is started, so registering the command costs the CLI nothing and needs no web stack installed."""

from __future__ import annotations

import secrets
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import click
import uvicorn

from .. import registry
from ..settings import get_settings
from .app import DashboardConfig, create_app
from .auth import ApiServer, Authenticator, KubernetesAuth, ProxyHeaders, TokenAuth


def make_authenticator(mode: str, token: str | None, *, apiserver: str | None = None, ca_file: str | None = None,
                       token_file: str | None = None, proxy_user_header: str | None = None,
                       proxy_groups_header: str | None = None) -> tuple[Authenticator, str | None]:
    """The authenticator and, in token mode, the token (generated when none is given)."""
    if mode == "auto":
        mode = "kubernetes" if (apiserver or ApiServer.in_cluster()) else "token"
    if mode == "token":
        chosen = token or secrets.token_urlsafe(24)
        return TokenAuth(chosen), chosen
    server = ApiServer(apiserver, ca_file, token_file or "/var/run/secrets/kubernetes.io/serviceaccount/token") \
        if apiserver else ApiServer.in_cluster()
    if server is None:
        raise click.UsageError("--auth kubernetes needs --apiserver (or to run in a pod with a service account)")
    proxy = ProxyHeaders(proxy_user_header, proxy_groups_header) if proxy_user_header else None
    return KubernetesAuth(server, proxy=proxy), None


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(*, host: str, port: int, token: str | None, mode: str, apiserver: str | None, ca_file: str | None,
          token_file: str | None, proxy_user_header: str | None, proxy_groups_header: str | None,
          hide_payloads: bool, modules: Sequence[str], database_url: str | None) -> None:
    """Run the dashboard in the foreground (what `kubetasks dashboard` does)."""
    settings = get_settings()
    registry.load_modules([*settings.worker.modules, *modules])
    authenticator, shown_token = make_authenticator(
        mode, token, apiserver=apiserver, ca_file=ca_file, token_file=token_file,
        proxy_user_header=proxy_user_header, proxy_groups_header=proxy_groups_header)
    config = DashboardConfig(database_url or settings.database.url, authenticator, hide_payloads=hide_payloads)
    sock = _socket(host, port)
    url = url_of(sock, host)
    if shown_token is not None:
        click.echo(f"kubetasks dashboard: {url}/#token={shown_token}")
        click.echo(f"API: curl -H 'Authorization: Bearer {shown_token}' {url}/api/v1/tasks")
    else:
        click.echo(f"kubetasks dashboard: {url} (Kubernetes RBAC: TokenReview + SubjectAccessReview)")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", access_log=False,
                                           proxy_headers=False))
    server.run(sockets=[sock])


@dataclass
class RunningDashboard:
    url: str  # with the token in the fragment: open it as is
    base_url: str
    token: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_background(database_url: str, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                     modules: Sequence[str] = (), paths: Sequence[str] = (), hide_payloads: bool = False,
                     ready_timeout: float = 10.0) -> RunningDashboard:
    """Start the dashboard in a daemon thread (token auth) and return once it accepts connections; for
    `kubetasks dev` and tests. `modules` are imported (from `paths`, put first on sys.path) for the task
    manager's actor list; `url` holds the token, so printing it gives a link that signs in."""
    for folder in reversed(paths):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    registry.load_modules(list(modules))
    authenticator, chosen = make_authenticator("token", token)
    assert chosen is not None
    sock = _socket(host, port)
    base = url_of(sock, host)
    server = uvicorn.Server(uvicorn.Config(create_app(DashboardConfig(database_url, authenticator,
                                                                      hide_payloads=hide_payloads)),
                                           log_level="warning", access_log=False, proxy_headers=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="kubetasks-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the dashboard did not start")
    return RunningDashboard(f"{base}/#token={chosen}", base, chosen, server, thread)
