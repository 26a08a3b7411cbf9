"""The dashboard's ASGI application: the JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json) and the UI.

Every handler is synchronous (FastAPI runs them in its thread pool) on a pooled psycopg connection. State
changes are POST/PATCH/DELETE with a JSON body and the header `X-Requested-By: kubetasks`: a cross-site form
can set neither, so they are CSRF-safe whether the credentials come as a bearer token or from a proxy.
This module assembles the app; the routes are registered by resource from the `routes_*` modules.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from psycopg_pool import ConnectionPool

from .. import db
from . import http_errors, routes_counts, routes_meta, routes_schedules, routes_tasks
from .access import API, Access
from .auth import Authenticator
from .guard import Guard

PACKAGE = __package__ or "kubetasks.worker.dashboard"


@dataclass
class DashboardConfig:
    database_url: str
    authenticator: Authenticator
    hide_payloads: bool = False
    pool_size: int = 8
    title: str = "kubetasks"


def create_app(config: DashboardConfig) -> FastAPI:
    pool_holder: dict[str, ConnectionPool[Any]] = {}

    def get_pool() -> ConnectionPool[Any]:
        if "pool" not in pool_holder:
            pool_holder["pool"] = db.pool(config.database_url, max_size=config.pool_size,
                                          application_name="kubetasks-dashboard")
        return pool_holder["pool"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if "pool" in pool_holder:
            pool_holder.pop("pool").close()

    app = FastAPI(lifespan=lifespan, title="kubetasks dashboard API", version="1", openapi_url=f"{API}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="Tasks, schedules, actors and counts of kubetasks. Errors are "
                              "`{\"error\": {\"field\", \"problem\", \"fix\"}}`.")
    app.add_middleware(Guard)
    auth = config.authenticator
    http_errors.install(app)
    app.state.authenticator = auth
    access = Access(auth, get_pool, hide_payloads=config.hide_payloads)

    # -- API ---------------------------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    routes_meta.register(app, access)
    routes_tasks.register(app, access)
    routes_schedules.register(app, access)
    routes_counts.register(app, access)

    @app.api_route(f"{API}/{{rest:path}}", methods=["GET", "POST", "PATCH", "DELETE"], include_in_schema=False)
    def not_found(rest: str) -> JSONResponse:
        return http_errors.error(404, "path", f"no such API route: {API}/{rest}", f"see {API}/openapi.json")

    # -- UI ------------------------------------------------------------------------------------------------------
    templates = Environment(loader=PackageLoader(PACKAGE, "templates"), autoescape=select_autoescape(default=True))
    static_dir = resources.files(PACKAGE) / "static"
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    @app.get("/", include_in_schema=False)
    @app.get("/ui/{page:path}", include_in_schema=False)
    def page(request: Request) -> Response:
        html = templates.get_template("index.html").render(title=config.title, api=API, mode=auth.mode)
        return HTMLResponse(html)

    return app
