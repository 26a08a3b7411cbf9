"""How refusals become answers: the `{"error": {"field", "problem", "fix"}}` body, and the exception handlers
that give each error of the worker, the dashboard and its authenticator an HTTP status."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import InvalidInput, TaskNotFound
from .access import API
from .auth import AuthUnavailable, Forbidden, Unauthenticated
from .schedules import OwnedByResource


class Conflict(InvalidInput):
    """Refused because of the stored state (409), e.g. deleting a running task."""


def error(status: int, field: str, problem: str, fix: str = "") -> JSONResponse:
    body = {"error": {"field": field, "problem": problem, "fix": fix}}
    return JSONResponse(body, status_code=status)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

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
        status = 404 if isinstance(exc, LookupError) else 409 if isinstance(exc, Conflict | OwnedByResource) \
            else 400
        return error(status, exc.field, exc.problem, exc.fix)

    @app.exception_handler(TaskNotFound)
    def _missing(_: Request, exc: TaskNotFound) -> JSONResponse:
        return error(404, "id", str(exc), "list tasks with GET " + API + "/tasks")

    @app.exception_handler(Unauthenticated)
    def _unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        response = error(401, "Authorization", exc.problem, "send a valid bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="kubetasks"'
        return response

    @app.exception_handler(Forbidden)
    def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return error(403, "authorization", str(exc),
                     "ask for a (Cluster)RoleBinding to kubetasks-operator-user or kubetasks-admin, "
                     "or use an account that has it")

    @app.exception_handler(AuthUnavailable)
    def _unavailable(_: Request, exc: AuthUnavailable) -> JSONResponse:
        return error(503, "authorization", str(exc), "check the dashboard's access to the Kubernetes API")
