"""The worker's HTTP endpoints: /metrics (Prometheus), /healthz (the loop turns), /readyz (the database answers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]
Check = Callable[[], tuple[bool, str]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would drown the worker's log


def make_app(registry: CollectorRegistry, healthz: Check, readyz: Check) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, message = (healthz if path == "/healthz" else readyz)()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{'ok' if ok else 'not ready'}: {message}\n".encode()]
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /metrics, /healthz or /readyz\n"]

    return app


def serve(host: str, port: int, registry: CollectorRegistry, healthz: Check, readyz: Check) -> WSGIServer:
    """Serve in a daemon thread; returns the server (its `server_port` is the bound port, useful with 0)."""
    server = make_server(host, port, make_app(registry, healthz, readyz), _Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="kubetasks-http", daemon=True).start()
    return server
