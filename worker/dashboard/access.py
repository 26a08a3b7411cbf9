"""What every route module shares: the API prefix, the caller (`User`), a pooled connection, and the RBAC checks
that decide which tasks and schedules the caller may see and change."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from .. import db, schedules
from ..errors import TaskNotFound
from ..schedules import ScheduleNotFound
from . import counts
from .auth import Authenticator, Check, Forbidden, Principal
from .scope import EVERYTHING, Scope, schedule_namespace, task_namespace

API = "/api/v1"
HIDDEN = "(hidden: needs get on taskruns/payload)"


def _principal(request: Request) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.authenticate({k.lower(): v for k, v in request.headers.items()})


User = Annotated[Principal, Depends(_principal)]


class Access:
    """One app's connection pool and authenticator, with the checks its routes make before they read or act."""

    def __init__(self, auth: Authenticator, get_pool: Callable[[], ConnectionPool[Any]], *,
                 hide_payloads: bool) -> None:
        self.auth = auth
        self.hide_payloads = hide_payloads
        self._get_pool = get_pool

    @contextmanager
    def connection(self) -> Iterator[db.Conn]:
        with self._get_pool().connection() as conn:
            yield conn

    def require(self, who: Principal, verb: str, resource: str, namespace: str | None,
                subresource: str = "") -> None:
        check = Check(verb, resource, namespace, subresource)
        if not self.auth.allowed(who, check):
            raise Forbidden(who, check)

    def scope(self, conn: db.Conn, who: Principal, resource: str = "taskruns") -> Scope:
        auth = self.auth
        if who.all_access or auth.allowed(who, Check("list", resource, None)):
            return EVERYTHING
        visible = frozenset(ns for ns in counts.namespaces(conn) if auth.allowed(who, Check("list", resource, ns)))
        return Scope(visible, cluster=False)

    def payloads(self, who: Principal, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tasks or schedules with args and result replaced, unless payloads are shown or the caller may see them."""
        if not self.hide_payloads or who.all_access:
            return items
        for item in items:
            if not self.auth.allowed(who, Check("get", "taskruns", item.get("namespace"), "payload")):
                item["args"] = HIDDEN
                if item.get("result") is not None:
                    item["result"] = HIDDEN
        return items

    @staticmethod
    def _task_namespace(conn: db.Conn, task_id: int) -> str | None:
        row = conn.execute("SELECT schedule_name, object_ref FROM kubetasks.tasks WHERE id = %s",
                           (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return task_namespace(row["schedule_name"], row["object_ref"])

    def visible_task(self, conn: db.Conn, who: Principal, task_id: int) -> str | None:
        namespace = self._task_namespace(conn, task_id)
        if not (who.all_access or self.auth.allowed(who, Check("get", "taskruns", namespace))):
            raise TaskNotFound(task_id)  # no hint that it exists
        return namespace

    def visible_schedule(self, conn: db.Conn, who: Principal, name: str) -> None:
        schedules.get(conn, name)
        if not (who.all_access or self.auth.allowed(who, Check("get", "schedules", schedule_namespace(name)))):
            raise ScheduleNotFound(name)
