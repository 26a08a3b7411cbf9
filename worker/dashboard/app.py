"""The dashboard's ASGI application: the JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json) and the UI.

Every handler is synchronous (FastAPI runs them in its thread pool) on a pooled psycopg connection. State
changes are POST/PATCH/DELETE with a JSON body and the header `X-Requested-By: kubetasks`: a cross-site form
can set neither, so they are CSRF-safe whether the credentials come as a bearer token or from a proxy.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import db, manifests, queue, registry, schedules
from ..errors import InvalidInput, TaskNotFound
from ..schedules import ScheduleNotFound
from . import service
from .auth import Authenticator, AuthUnavailable, Check, Forbidden, Principal, Unauthenticated
from .schemas import describe

API = "/api/v1"
CSRF_HEADER = "x-requested-by"
HIDDEN = "(hidden: needs get on taskruns/payload)"
PACKAGE = __package__ or "kubetasks.worker.dashboard"


@dataclass
class DashboardConfig:
    database_url: str
    authenticator: Authenticator
    hide_payloads: bool = False
    pool_size: int = 8
    title: str = "kubetasks"


class Conflict(InvalidInput):
    """Refused because of the stored state (409), e.g. deleting a running task."""


def _error(status: int, field: str, problem: str, fix: str = "") -> JSONResponse:
    body = {"error": {"field": field, "problem": problem, "fix": fix}}
    return JSONResponse(body, status_code=status)


class _Guard:
    """Plain ASGI middleware: CSRF header on state changes, security headers on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and headers.get(CSRF_HEADER) != "kubetasks":
            response = _error(403, "X-Requested-By", "state-changing requests must carry this header",
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


# -- Request bodies -------------------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Body):
    actor: str = Field(description="A declared actor's name (see /actors).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments, checked against the "
                                 "actor's args_schema.")
    queue: str | None = None
    eta: datetime | None = Field(None, description="Run at this time (ISO 8601 with offset); default now.")
    description: str | None = Field(None, max_length=1000)


class ScheduleCreate(_Body):
    name: str = Field(description="'<namespace>/<name>'")
    actor: str
    args: dict[str, Any] = Field(default_factory=dict)
    cron: str
    time_zone: str = "UTC"
    queue: str | None = None


class ScheduleEdit(_Body):
    cron: str | None = None
    time_zone: str | None = None


class Filter(_Body):
    state: list[str] = []
    actor: list[str] = []
    queue: list[str] = []
    schedule: str | None = None
    object: str | None = None
    exclude_successful: bool = False


class Bulk(_Body):
    action: Literal["delete", "retry", "flush"]
    filter: Filter = Filter()
    queue: str | None = Field(None, description="The queue to flush (action flush).")
    include_unfinished: bool = Field(False, description="delete: also queued and running tasks.")
    dry_run: bool = Field(True, description="Only count what would be touched (the default).")


class CancelBody(_Body):
    message: str | None = Field(None, max_length=1000)


def _principal(request: Request) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.authenticate({k.lower(): v for k, v in request.headers.items()})


User = Annotated[Principal, Depends(_principal)]


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
    app.add_middleware(_Guard)
    auth = config.authenticator

    @contextmanager
    def connection() -> Iterator[db.Conn]:
        with get_pool().connection() as conn:
            yield conn

    # -- errors --------------------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            field = ".".join(loc) or "body"
            problem = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid"))
            fix = {"missing": "add it", "extra_forbidden": "remove it or check its spelling"}.get(
                str(err.get("type")), "see the OpenAPI document at " + API + "/openapi.json")
            errors.append({"field": field, "problem": problem, "fix": fix})
        return JSONResponse({"error": errors[0], "errors": errors}, status_code=400)

    @app.exception_handler(InvalidInput)
    def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        status = 404 if isinstance(exc, LookupError) else 409 if isinstance(exc, Conflict | service.OwnedByResource) \
            else 400
        return _error(status, exc.field, exc.problem, exc.fix)

    @app.exception_handler(TaskNotFound)
    def _missing(_: Request, exc: TaskNotFound) -> JSONResponse:
        return _error(404, "id", str(exc), "list tasks with GET " + API + "/tasks")

    @app.exception_handler(Unauthenticated)
    def _unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        response = _error(401, "Authorization", exc.problem, "send a valid bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="kubetasks"'
        return response

    @app.exception_handler(Forbidden)
    def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, "authorization", str(exc),
                      "ask for a (Cluster)RoleBinding to kubetasks-operator-user or kubetasks-admin, "
                      "or use an account that has it")

    @app.exception_handler(AuthUnavailable)
    def _unavailable(_: Request, exc: AuthUnavailable) -> JSONResponse:
        return _error(503, "authorization", str(exc), "check the dashboard's access to the Kubernetes API")

    app.state.authenticator = auth

    def require(who: Principal, verb: str, resource: str, namespace: str | None, subresource: str = "") -> None:
        check = Check(verb, resource, namespace, subresource)
        if not auth.allowed(who, check):
            raise Forbidden(who, check)

    def scope(conn: db.Conn, who: Principal, resource: str = "taskruns") -> service.Scope:
        if who.all_access or auth.allowed(who, Check("list", resource, None)):
            return service.EVERYTHING
        visible = frozenset(ns for ns in service.namespaces(conn) if auth.allowed(who, Check("list", resource, ns)))
        return service.Scope(visible, cluster=False)

    def payloads(who: Principal, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tasks or schedules with args and result replaced, unless payloads are shown or the caller may see them."""
        if not config.hide_payloads or who.all_access:
            return items
        for item in items:
            if not auth.allowed(who, Check("get", "taskruns", item.get("namespace"), "payload")):
                item["args"] = HIDDEN
                if item.get("result") is not None:
                    item["result"] = HIDDEN
        return items

    def task_namespace(conn: db.Conn, task_id: int) -> str | None:
        row = conn.execute("SELECT schedule_name, object_ref FROM kubetasks.tasks WHERE id = %s",
                           (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return service.task_namespace(row["schedule_name"], row["object_ref"])

    def visible_task(conn: db.Conn, who: Principal, task_id: int) -> str | None:
        namespace = task_namespace(conn, task_id)
        if not (who.all_access or auth.allowed(who, Check("get", "taskruns", namespace))):
            raise TaskNotFound(task_id)  # no hint that it exists
        return namespace

    def visible_schedule(conn: db.Conn, who: Principal, name: str) -> None:
        schedules.get(conn, name)
        if not (who.all_access or auth.allowed(who, Check("get", "schedules", service.schedule_namespace(name)))):
            raise ScheduleNotFound(name)

    # -- API: identity, health ---------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API}/whoami", tags=["meta"])
    def whoami(who: User) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "mode": auth.mode,
                "hide_payloads": config.hide_payloads}

    @app.get(f"{API}/namespaces", tags=["meta"], summary="Namespaces holding tasks or schedules the caller may see")
    def list_namespaces(who: User) -> dict[str, Any]:
        with connection() as conn:
            visible = scope(conn, who)
            return {"items": [ns for ns in service.namespaces(conn) if visible.allows(ns)],
                    "standalone": visible.cluster}

    # -- API: tasks ----------------------------------------------------------------------------------------------
    @app.get(f"{API}/tasks", tags=["tasks"], summary="Tasks, newest first, with keyset pagination")
    def list_tasks(who: User,
                   state: Annotated[list[str], Query(description="Repeatable.")] = [],  # noqa: B006
                   actor: Annotated[list[str], Query()] = [],  # noqa: B006
                   queue: Annotated[list[str], Query()] = [],  # noqa: B006
                   schedule: str | None = None,
                   object: Annotated[str | None, Query(description="object_ref")] = None,
                   namespace: str | None = None,
                   standalone: bool = False,
                   exclude_successful: bool = False,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None,
                   search: str | None = None,
                   before: Annotated[int | None, Query(description="The `next` of the previous page.")] = None,
                   limit: Annotated[int, Query(ge=1, le=service.MAX_LIMIT)] = 50) -> dict[str, Any]:
        query = service.TaskQuery(tuple(state), tuple(actor), tuple(queue), schedule, object, namespace,
                                  standalone, exclude_successful, created_after, created_before, search)
        query.check()
        with connection() as conn:
            page = service.list_tasks(conn, query, scope(conn, who), limit=limit, before=before)
        page["items"] = payloads(who, page["items"])
        return page

    @app.get(f"{API}/tasks/{{task_id}}", tags=["tasks"], summary="One task with its attempts (logs, errors)")
    def get_task(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            visible_task(conn, who, task_id)
            return payloads(who, [service.task_detail(conn, task_id)])[0]

    @app.post(f"{API}/tasks", tags=["tasks"], status_code=201, summary="Enqueue a task (the task manager)")
    def create_task(who: User, body: TaskCreate) -> dict[str, Any]:
        require(who, "create", "taskruns", None)
        if body.eta is not None and body.eta.tzinfo is None:
            raise InvalidInput("eta", "has no time zone", "write it with an offset, e.g. 2026-01-01T10:00:00Z")
        with connection() as conn:
            return service.create_task(conn, body.actor, body.args, queue_name=body.queue, eta=body.eta,
                                       description=body.description)

    @app.post(f"{API}/tasks/{{task_id}}/retry", tags=["tasks"], summary="Queue a finished task again")
    def retry(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            require(who, "retry", "taskruns", visible_task(conn, who, task_id))
            try:
                task = queue.retry_task(conn, task_id)
            except InvalidInput as exc:
                raise Conflict(exc.field, exc.problem, exc.fix) from None
            return payloads(who, [service.task_json(task)])[0]

    @app.post(f"{API}/tasks/{{task_id}}/cancel", tags=["tasks"], summary="Cancel a queued or running task")
    def cancel(who: User, task_id: int, body: CancelBody | None = None) -> dict[str, Any]:
        with connection() as conn:
            require(who, "cancel", "taskruns", visible_task(conn, who, task_id))
            task = queue.cancel_task(conn, task_id, body.message if body else None)
            if task is None:
                raise Conflict("id", f"task {task_id} has already finished", "nothing to cancel")
            return payloads(who, [service.task_json(task)])[0]

    @app.delete(f"{API}/tasks/{{task_id}}", tags=["tasks"], summary="Delete a finished task and its attempts")
    def delete(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            require(who, "delete", "taskruns", visible_task(conn, who, task_id))
            row = conn.execute("DELETE FROM kubetasks.tasks WHERE id = %s AND state NOT IN ('queued', 'running') "
                               "RETURNING id", (task_id,)).fetchone()
            if row is None:
                raise Conflict("id", f"task {task_id} has not finished", "cancel it first")
            return {"deleted": task_id}

    @app.post(f"{API}/tasks/bulk", tags=["tasks"],
              summary="Runbook actions by filter: delete, retry failed, flush a queue (dry run by default)")
    def bulk(who: User, body: Bulk) -> dict[str, Any]:
        verb = {"delete": "delete", "retry": "retry", "flush": "flush"}[body.action]
        require(who, "list" if body.dry_run else verb, "taskruns", None)
        f = body.filter
        query = service.TaskQuery(tuple(f.state), tuple(f.actor), tuple(f.queue), f.schedule, f.object,
                                  exclude_successful=f.exclude_successful)
        query.check()
        with connection() as conn:
            return service.bulk(conn, body.action, query, dry_run=body.dry_run, queue_name=body.queue,
                                include_unfinished=body.include_unfinished)

    # -- API: schedules --------------------------------------------------------------------------------------------
    @app.get(f"{API}/schedules", tags=["schedules"], summary="Schedules with next and last run")
    def list_schedules(who: User, namespace: str | None = None) -> dict[str, Any]:
        service.TaskQuery(namespace=namespace).check()
        with connection() as conn:
            return {"items": payloads(who, service.list_schedules(conn, scope(conn, who, "schedules"), namespace))}

    def schedule_route(path: str, method: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        return app.api_route(f"{API}/schedules/{{namespace}}/{{name}}{path}", methods=[method],
                             tags=["schedules"], **kwargs)

    @schedule_route("", "GET", summary="One schedule with its recent runs")
    def get_schedule(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            data = payloads(who, [service.schedule_detail(conn, key)])[0]
            data["recent_runs"] = payloads(who, data["recent_runs"])
            return data

    @schedule_route("/trigger", "POST", summary="Start one run now (works while paused)")
    def trigger(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "trigger", "schedules", namespace)
            triggered = service.trigger_schedule(conn, key)
            triggered["task"] = payloads(who, [triggered["task"]])[0]
            return triggered

    @schedule_route("/pause", "POST", summary="Stop starting runs (not for Schedule resources)")
    def pause(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "pause", "schedules", namespace)
            return service.pause_schedule(conn, key)

    @schedule_route("/resume", "POST", summary="Un-pause: one run now, then the next tick")
    def resume(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "pause", "schedules", namespace)
            try:
                return service.resume_schedule(conn, key)
            except service.OwnedByResource:
                raise
            except InvalidInput as exc:
                if isinstance(exc, LookupError):
                    raise
                raise Conflict(exc.field, exc.problem, exc.fix) from None

    @schedule_route("", "PATCH", summary="Edit cron and time zone (not for Schedule resources)")
    def edit(who: User, namespace: str, name: str, body: ScheduleEdit) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "update", "schedules", namespace)
            return service.edit_schedule(conn, key, cron=body.cron, time_zone=body.time_zone)

    @app.post(f"{API}/schedules", tags=["schedules"], status_code=201,
              summary="Create a schedule (the task manager's 'on a cron')")
    def create_schedule(who: User, body: ScheduleCreate) -> dict[str, Any]:
        manifests.check_schedule_name(body.name)
        require(who, "create", "schedules", service.schedule_namespace(body.name))
        with connection() as conn:
            return service.create_schedule(conn, body.name, body.actor, body.args, body.cron, body.time_zone,
                                           body.queue)

    # -- API: counts, queues, actors -----------------------------------------------------------------------------
    @app.get(f"{API}/overview", tags=["counts"],
             summary="Live counts by state and actor, last hour/day, throughput per minute, queue depth")
    def overview(who: User) -> dict[str, Any]:
        require(who, "list", "taskruns", None)
        with connection() as conn:
            return service.overview(conn)

    @app.get(f"{API}/queues", tags=["counts"], summary="Runnable, delayed and executing tasks per queue")
    def queues(who: User) -> dict[str, Any]:
        require(who, "list", "taskruns", None)
        with connection() as conn:
            return {"items": service.queue_depth(conn)}

    @app.get(f"{API}/actors", tags=["actors"], summary="Declared actors with a JSON Schema of their args")
    def actors(who: User) -> dict[str, Any]:
        return {"items": [describe(registry.get(name)) for name in registry.names()]}

    @app.get(f"{API}/actors/{{name}}", tags=["actors"])
    def actor(who: User, name: str) -> dict[str, Any]:
        return describe(registry.get(registry.validate_name(name)))

    @app.api_route(f"{API}/{{rest:path}}", methods=["GET", "POST", "PATCH", "DELETE"], include_in_schema=False)
    def not_found(rest: str) -> JSONResponse:
        return _error(404, "path", f"no such API route: {API}/{rest}", f"see {API}/openapi.json")

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
