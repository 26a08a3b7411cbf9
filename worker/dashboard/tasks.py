"""The dashboard's task reads and actions: the filtered, paginated list, one task's detail, enqueueing and the
bulk runbook actions. No HTTP here; one connection per call.

Reads and actions go through the worker's public functions (queue, registry) where they exist; the task list
has its own WHERE clause because it filters on more than `queue.TaskFilter` knows (standalone, time range,
namespace, search) and compares states as the enum, so the per-state index is usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import sql

from .. import protocol, queue, registry
from ..db import Conn
from ..errors import InvalidInput
from . import queries
from .schemas import validate_args
from .scope import Scope, task_namespace

MAX_LIMIT = 500


@dataclass(frozen=True)
class TaskQuery:
    states: Sequence[str] = ()
    actors: Sequence[str] = ()
    queues: Sequence[str] = ()
    schedule: str | None = None
    object_ref: str | None = None
    namespace: str | None = None
    standalone: bool = False
    exclude_successful: bool = False
    created_after: datetime | None = None
    created_before: datetime | None = None
    search: str | None = None

    def check(self) -> None:
        for value in self.states:
            if value not in protocol.STATES:
                raise InvalidInput("state", f"unknown state {value!r}", "use one of " + ", ".join(protocol.STATES))
        for value in self.actors:
            registry.validate_name(value)
        for value in self.queues:
            registry.validate_queue(value)
        if self.namespace is not None and not protocol.DNS_LABEL.fullmatch(self.namespace):
            raise InvalidInput("namespace", f"{self.namespace!r} is not a namespace name",
                               "use lowercase letters, digits and '-', e.g. 'default'")
        for label, moment in (("created_after", self.created_after), ("created_before", self.created_before)):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput(label, "has no time zone", "write it in ISO 8601 with an offset, e.g. "
                                   "2026-01-01T00:00:00Z")
        for name, text in (("schedule", self.schedule), ("object", self.object_ref), ("search", self.search)):
            if text is not None and ("\x00" in text or len(text) > 1024):
                raise InvalidInput(name, "is longer than 1024 characters or contains NUL", "shorten it")

    def where(self, scope: Scope) -> tuple[sql.Composable, dict[str, Any]]:
        self.check()
        common, params = self._common().where()
        clauses: list[sql.Composable] = [common]
        if self.standalone:
            clauses.append(sql.SQL("object_ref IS NULL"))
        if self.created_after is not None:
            clauses.append(sql.SQL("created_at >= %(created_after)s"))
            params["created_after"] = self.created_after
        if self.created_before is not None:
            clauses.append(sql.SQL("created_at < %(created_before)s"))
            params["created_before"] = self.created_before
        if self.search:
            if self.search.isdigit():
                clauses.append(sql.SQL("id = %(search_id)s"))
                params["search_id"] = int(self.search)
            else:
                clauses.append(sql.SQL("(actor ILIKE %(search)s OR object_ref ILIKE %(search)s "
                                       "OR schedule_name ILIKE %(search)s)"))
                params["search"] = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace(
                    "_", "\\_") + "%"
        namespace_expr = sql.SQL("kubetasks.task_namespace(schedule_name, object_ref)")
        if self.namespace is not None:
            clauses.append(sql.SQL("(schedule_name IS NOT NULL OR object_ref IS NOT NULL) AND {} = %(namespace)s")
                           .format(namespace_expr))
            params["namespace"] = self.namespace
        if not scope.everything:
            allowed: list[sql.Composable] = []
            if scope.cluster:
                allowed.append(sql.SQL("{} IS NULL").format(namespace_expr))
            if scope.namespaces is None:
                allowed.append(sql.SQL("{} IS NOT NULL").format(namespace_expr))
            elif scope.namespaces:
                allowed.append(sql.SQL("{} = ANY(%(allowed_namespaces)s)").format(namespace_expr))
                params["allowed_namespaces"] = sorted(scope.namespaces)
            clauses.append(sql.SQL("({})").format(sql.SQL(" OR ").join(allowed)) if allowed else sql.SQL("false"))
        return sql.SQL(" AND ").join(clauses), params

    def _common(self) -> queue.TaskFilter:
        """What the worker's filter can say of this query (state, actor, queue, schedule, object, successful)."""
        return queue.TaskFilter(states=tuple(self.states), actors=tuple(self.actors), queues=tuple(self.queues),
                                schedule=self.schedule, object_ref=self.object_ref,
                                exclude_successful=self.exclude_successful)

    def as_filter(self) -> queue.TaskFilter:
        """The worker's filter for bulk actions; refused when it cannot express this query."""
        unsupported = [name for name, value in (
            ("namespace", self.namespace), ("standalone", self.standalone or None),
            ("created_after", self.created_after), ("created_before", self.created_before),
            ("search", self.search)) if value is not None]
        if unsupported:
            raise InvalidInput(unsupported[0], "is not supported by bulk actions",
                               "filter by state, actor, queue, schedule or object")
        return self._common()


def task_json(task: queue.Task, description: str | None = None) -> dict[str, Any]:
    data = task.as_json()
    data["namespace"] = task_namespace(task.schedule_name, task.object_ref)
    data["description"] = description
    return data


def list_tasks(conn: Conn, query: TaskQuery, scope: Scope, *, limit: int = 50,
               before: int | None = None) -> dict[str, Any]:
    """Newest first; `next` is the cursor of the following page (pass it as `before`), None on the last."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("limit", f"{limit} is out of range", f"use 1 to {MAX_LIMIT}")
    if before is not None and before < 1:
        raise InvalidInput("before", f"{before} is not a task id", "pass the `next` value of the previous page")
    statement, params = list_statement(query, scope, limit=limit + 1, before=before)
    rows = list(conn.execute(statement, params))
    items = [task_json(queue.Task.from_row(row), row.get("description")) for row in rows[:limit]]
    return {"items": items, "next": items[-1]["id"] if len(rows) > limit else None}


def list_statement(query: TaskQuery, scope: Scope, *, limit: int,
                   before: int | None = None) -> tuple[sql.Composed, dict[str, Any]]:
    """The task list's SELECT: one newest-first branch per index-friendly condition, merged by UNION ALL."""
    where, params = query.where(scope)
    return queue.list_statement(where, params, query._common().branches(), limit=limit, before_id=before)


def _attempt_json(row: dict[str, Any], current: bool) -> dict[str, Any]:
    started, finished = row.get("started_at"), row.get("finished_at")
    duration = (finished - started).total_seconds() if started and finished else None
    out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items() if k != "task_id"}
    out["duration"] = duration
    out["current"] = current
    return out


def task_detail(conn: Conn, task_id: int) -> dict[str, Any]:
    task = queue.get_task(conn, task_id)
    row = conn.execute("SELECT description FROM kubetasks.tasks WHERE id = %s", (task_id,)).fetchone()
    data = task_json(task, row["description"] if row else None)
    attempts = queue.attempts(conn, task_id)
    data["attempt_log"] = [_attempt_json(a, a["attempt"] == task.attempts) for a in attempts]
    data["in_flight"] = task.worker is not None
    return data


def create_task(conn: Conn, actor: str, args: dict[str, Any], *, queue_name: str | None = None,
                eta: datetime | None = None, description: str | None = None,
                object_ref: str | None = None) -> dict[str, Any]:
    declared = registry.get(registry.validate_name(actor))
    checked = validate_args(declared, args)
    if description is not None and (len(description) > 1000 or "\x00" in description):
        raise InvalidInput("description", "is longer than 1000 characters or contains NUL", "shorten it")
    if object_ref is not None and (not 1 <= len(object_ref) <= 1024 or "\x00" in object_ref):
        raise InvalidInput("object_ref", "must be 1 to 1024 characters without NUL", "shorten it")
    with conn.transaction():
        task = queue.enqueue(conn, declared, checked, queue=queue_name, eta=eta, object_ref=object_ref)
        if description:
            conn.execute(queries.get("task_set_description"), {"id": task.id, "description": description})
    return task_json(task, description)


BulkAction = Literal["delete", "retry", "flush"]


def bulk(conn: Conn, action: BulkAction, query: TaskQuery, *, dry_run: bool, queue_name: str | None = None,
         include_unfinished: bool = False) -> dict[str, Any]:
    """The runbook's actions: delete by filter, retry every finished task matching, flush a queue's waiting
    tasks. With `dry_run`, only how many would be touched."""
    if action == "flush":
        if not queue_name:
            raise InvalidInput("queue", "is required to flush", "name the queue whose waiting tasks to delete")
        registry.validate_queue(queue_name)
        preview = TaskQuery(states=("queued",), queues=(queue_name,))
        if dry_run:
            row = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE queue = %s AND state = 'queued' "
                               "AND worker IS NULL", (queue_name,)).fetchone()
            return {"action": action, "dry_run": True, "count": int(row["n"]) if row else 0,
                    "filter": _describe(preview)}
        return {"action": action, "dry_run": False, "count": queue.flush_queue(conn, queue_name),
                "filter": _describe(preview)}
    task_filter = query.as_filter()
    if action == "delete":
        if dry_run:
            where, params = task_filter.where()
            if not (task_filter.states or task_filter.actors or task_filter.queues or task_filter.schedule
                    or task_filter.object_ref):
                raise InvalidInput("filters", "deleting every task needs at least one filter",
                                   "pass state, actor, queue, schedule or object")
            if not include_unfinished:
                where = sql.SQL("{} AND state NOT IN ('queued', 'running')").format(where)
            row = conn.execute(sql.SQL("SELECT count(*) AS n FROM kubetasks.tasks WHERE {}").format(where),
                               params).fetchone()
            count = int(row["n"]) if row else 0
        else:
            count = queue.delete_tasks(conn, task_filter, include_unfinished=include_unfinished)
        return {"action": action, "dry_run": dry_run, "count": count, "filter": _describe(query)}
    # retry: finished tasks only (a live one is already going to run)
    where, params = task_filter.where()
    where = sql.SQL("{} AND state NOT IN ('queued', 'running', 'successful')").format(where)
    if dry_run:
        row = conn.execute(sql.SQL("SELECT count(*) AS n FROM kubetasks.tasks WHERE {}").format(where),
                           params).fetchone()
        return {"action": action, "dry_run": True, "count": int(row["n"]) if row else 0,
                "filter": _describe(query)}
    with conn.transaction():
        ids = [r["id"] for r in conn.execute(
            sql.SQL("SELECT id FROM kubetasks.tasks WHERE {} FOR UPDATE SKIP LOCKED").format(where), params)]
        row = conn.execute(queries.get("tasks_retry_many"), {"ids": ids}).fetchone()
    return {"action": action, "dry_run": False, "count": int(row["retried"]) if row else 0,
            "filter": _describe(query)}


def _describe(query: TaskQuery) -> dict[str, Any]:
    return {k: v for k, v in (("state", list(query.states)), ("actor", list(query.actors)),
                              ("queue", list(query.queues)), ("schedule", query.schedule),
                              ("object", query.object_ref), ("exclude_successful", query.exclude_successful))
            if v}
