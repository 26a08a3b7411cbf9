"""`kubetasks dashboard`, and `start_background` for `kubetasks dev`.

Inside a cluster (a service-account token is mounted) requests are authorised by Kubernetes RBAC; outside,
by a random token printed at start (or --token), and the server binds 127.0.0.1 unless told otherwise.
Only click is imported here: the web stack (the `dashboard` extra) is loaded when the dashboard starts, so the
CLI can register this command and the worker still starts without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .server import RunningDashboard

MISSING = "the dashboard needs the `dashboard` extra: pip install 'kubetasks[dashboard]'"


def _server() -> ModuleType:
    try:
        from . import server
    except ImportError as exc:
        raise click.ClickException(f"{MISSING} ({exc})") from None
    return server


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 in a pod).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="KUBETASKS_DASHBOARD_TOKEN", help="Token of --auth token (default: random, printed).")
@click.option("--auth", "mode", type=click.Choice(["auto", "token", "kubernetes"]), default="auto", show_default=True,
              help="auto: Kubernetes RBAC inside a pod, a token outside.")
@click.option("--apiserver", help="Kubernetes API URL (default: in-cluster).")
@click.option("--apiserver-ca", "ca_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--apiserver-token-file", "token_file", type=click.Path(exists=True, dir_okay=False),
              help="The dashboard's own token, used to create TokenReviews and SubjectAccessReviews.")
@click.option("--proxy-user-header", help="Trust this header's user name (an authenticating proxy sets it).")
@click.option("--proxy-groups-header", help="Trust this header's comma-separated groups.")
@click.option("--hide-payloads", is_flag=True, help="Show args and results only to who may get taskruns/payload.")
@click.option("--module", "modules", multiple=True, help="Module declaring actors (task manager); repeatable.")
@click.option("--database-url", envvar="KUBETASKS_DATABASE__URL", help="Default: KUBETASKS_DATABASE__URL.")
def dashboard(host: str, port: int, token: str | None, mode: str, apiserver: str | None, ca_file: str | None,
              token_file: str | None, proxy_user_header: str | None, proxy_groups_header: str | None,
              hide_payloads: bool, modules: tuple[str, ...], database_url: str | None) -> None:
    """Serve the dashboard (web UI and JSON API under /api/v1)."""
    _server().serve(host=host, port=port, token=token, mode=mode, apiserver=apiserver, ca_file=ca_file,
                    token_file=token_file, proxy_user_header=proxy_user_header,
                    proxy_groups_header=proxy_groups_header, hide_payloads=hide_payloads, modules=modules,
                    database_url=database_url)


def start_background(database_url: str, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                     modules: Sequence[str] = (), paths: Sequence[str] = (), hide_payloads: bool = False,
                     ready_timeout: float = 10.0) -> RunningDashboard:
    """Start the dashboard in a daemon thread (token auth) and return once it accepts connections, for
    `kubetasks dev`: print `.url` (it holds the token, so the link signs in) and call `.stop()` before the
    database goes. `modules` are imported (from `paths`, put first on sys.path) for the task manager.
    Raises click.ClickException when the `dashboard` extra is not installed."""
    running: RunningDashboard = _server().start_background(
        database_url, host=host, port=port, token=token, modules=modules, paths=paths,
        hide_payloads=hide_payloads, ready_timeout=ready_timeout)
    return running
