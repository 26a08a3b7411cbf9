"""The dashboard's CSRF guard and security headers, as plain ASGI middleware around every request."""

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .http_errors import error

CSRF_HEADER = "x-requested-by"


class Guard:
    """Plain ASGI middleware: CSRF header on state changes, security headers on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and headers.get(CSRF_HEADER) != "kubetasks":
            response = error(403, "X-Requested-By", "state-changing requests must carry this header",
                             "send 'X-Requested-By: kubetasks' (the UI does)")
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
                     b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                     b"form-action 'self'"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
