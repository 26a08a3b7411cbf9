"""The operator's database layer: custom resource specs -> rows, each write idempotent, and the reads that
mirror rows back onto custom resources. Its SQL is `operator/sql/*.sql`, loaded by the worker's loader.

Kopf may deliver the same creation twice (a restart before its progress was stored, a second operator
replica), so nothing here trusts "this is the first time":

* a TaskRun's task is found by `object_ref` ("taskrun/<namespace>/<name>/<uid>") before one is inserted,
  and the look-up and insert run under a transaction-level advisory lock on that ref, so two operators
  racing on one TaskRun serialise and the second finds the first's row;
* a Schedule is an upsert of its row ("<namespace>/<name>", source "operator");
* a manual trigger marks the run it created with `object_ref` "trigger/<namespace>/<name>/<value>", under
  the same kind of lock, so one annotation value fires exactly once however often it is seen.

Only Kubernetes-free code lives here; reading and writing custom resources is the job of `taskruns` and
`schedules`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, LiteralString

from psycopg import sql

from kubetasks.worker import controls, manifests, queries, queue, schedules
from kubetasks.worker.db import Conn
from kubetasks.worker.settings import Settings

from . import children, resources, scaling

TASKRUN_PREFIX = "taskrun/"
TRIGGER_PREFIX = "trigger/"
_MAX_REF = 512
QUERY_FILES = ("tasks.sql", "schedules.sql")


@cache
def all_queries() -> dict[str, LiteralString]:
    return queries.load("kubetasks.operator.sql", QUERY_FILES)


def query(name: str) -> LiteralString:
    return all_queries()[name]


def row_name(namespace: str, name: str) -> str:
    return str(manifests.schedule_name(namespace, name))


def taskrun_ref(namespace: str, name: str, uid: str) -> str:
    return f"{TASKRUN_PREFIX}{namespace}/{name}/{uid}"


@dataclass(frozen=True)
class Target:
    """Where a task row is mirrored: the TaskRun's namespace and name, and what must match."""

    namespace: str
    name: str
    uid: str | None = None  # a hand-made TaskRun: only the object with this uid is ours
    schedule: str | None = None  # a scheduled run: the owning Schedule's name (the TaskRun may not exist yet)


def target_of(row: dict[str, Any]) -> Target | None:
    """The TaskRun a task row belongs to, or None when no custom resource mirrors it."""
    ref = row.get("object_ref") or ""
    if ref.startswith(TASKRUN_PREFIX):
        parts = ref[len(TASKRUN_PREFIX):].split("/")
        if len(parts) == 3 and all(parts):
            return Target(namespace=parts[0], name=parts[1], uid=parts[2])
        return None
    schedule_name = row.get("schedule_name") or ""
    if row.get("schedule_source") == "operator" and schedule_name.count("/") == 1:
        namespace, schedule = schedule_name.split("/")
        return Target(namespace=namespace, name=children.child_name(schedule, row["id"]), schedule=schedule)
    return None


def _lock(conn: Conn, key: str) -> None:
    conn.execute(query("lock_key"), {"key": key})


# -- TaskRun ----------------------------------------------------------------------------------------------


def ensure_task(conn: Conn, ref: str, spec: resources.TaskRunSpec, *, validate_actor: bool,
                settings: Settings) -> tuple[queue.Task, bool]:
    """The task of a TaskRun, inserted the first time: (task, created). Raises InvalidInput on a bad spec."""
    with conn.transaction():
        _lock(conn, ref)
        row = conn.execute(query("task_by_ref"), {"ref": ref}).fetchone()
        if row is not None:
            return queue.Task.from_row(row), False
        task = queue.enqueue(
            conn, spec.actor, spec.args, queue=spec.queue, eta=spec.run_at, priority=spec.priority,
            max_retries=spec.retries.limit, time_limit=spec.time_limit_seconds,
            retry_backoff=spec.retries.backoff_seconds, object_ref=ref,
            validate=validate_actor, settings=settings, notify=spec.notifications or None)
        return task, True


def find_task(conn: Conn, ref: str) -> queue.Task | None:
    row = conn.execute(query("task_by_ref"), {"ref": ref}).fetchone()
    return queue.Task.from_row(row) if row is not None else None


def cancel(conn: Conn, task_id: int, message: str) -> queue.Task | None:
    """Cancel a task unless it already finished (None then) or no longer exists (purged: None too)."""
    try:
        return queue.cancel_task(conn, task_id, message)
    except LookupError:
        return None


# -- Schedule ---------------------------------------------------------------------------------------------


def apply_schedule(conn: Conn, namespace: str, name: str, spec: dict[str, Any], *, validate_actor: bool,
                   settings: Settings) -> dict[str, Any]:
    """Validate a Schedule's spec and upsert its row; returns the row. Raises InvalidInput naming the field."""
    parsed = manifests.parse_spec(spec)
    row: dict[str, Any] = schedules.apply(conn, row_name(namespace, name), parsed, source="operator",
                                          validate_actor=validate_actor, settings=settings)
    return row


def delete_schedule(conn: Conn, namespace: str, name: str) -> bool:
    return bool(schedules.delete(conn, row_name(namespace, name), missing_ok=True))


def trigger_ref(namespace: str, name: str, value: str) -> str:
    ref = f"{TRIGGER_PREFIX}{namespace}/{name}/{value}"
    if len(ref) > _MAX_REF:  # annotation values may be long; the marker only has to be unique
        ref = f"{TRIGGER_PREFIX}{namespace}/{name}/sha256:{hashlib.sha256(value.encode()).hexdigest()}"
    return ref


def trigger_once(conn: Conn, namespace: str, name: str, value: str, *,
                 settings: Settings) -> tuple[queue.Task, bool]:
    """Fire one run for this trigger value unless it already did: (task, fired now).

    With `deduplicate` and a run still live, that run is returned and nothing is marked, like `trigger`.
    """
    ref = trigger_ref(namespace, name, value)
    with conn.transaction():
        _lock(conn, ref)
        done = find_task(conn, ref)
        if done is not None:
            return done, False
        task = schedules.trigger(conn, row_name(namespace, name), settings=settings)
        if task.created:
            conn.execute(query("task_mark_ref"), {"ref": ref, "id": task.id})
        return task, task.created


@dataclass(frozen=True)
class ScheduleRuns:
    """A schedule's row and the runs it shows."""

    row: dict[str, Any] | None
    kept: list[dict[str, Any]]  # TaskRuns that should exist (live runs and the history limits' worth)
    newest: dict[str, Any] | None
    finished: dict[str, Any] | None


def schedule_runs(conn: Conn, namespace: str, name: str, keep_successful: int, keep_failed: int) -> ScheduleRuns:
    key = row_name(namespace, name)
    try:
        row: dict[str, Any] | None = schedules.get(conn, key)
    except schedules.ScheduleNotFound:
        row = None
    kept = list(conn.execute(query("schedule_kept_runs"), {
        "name": key, "keep_successful": keep_successful, "keep_failed": keep_failed}))
    latest = conn.execute(query("schedule_latest_runs"), {"name": key}).fetchone() or {}
    return ScheduleRuns(row=row, kept=kept, newest=latest.get("newest"), finished=latest.get("finished"))


def schedule_marks(conn: Conn) -> dict[str, tuple[Any, ...]]:
    """{"<namespace>/<name>": what its status is made of} for every operator-managed schedule."""
    return {row["name"]: (row["next_run"], row["last_run"], row["last_success"], row["paused"], row["updated_at"])
            for row in conn.execute(query("schedule_marks"))}


# -- Reading back -----------------------------------------------------------------------------------------


def task_views(conn: Conn, ids: Iterable[int]) -> list[dict[str, Any]]:
    wanted = sorted(set(ids))
    if not wanted:
        return []
    return list(conn.execute(query("task_views"), {"ids": wanted}))


def changed_since(conn: Conn, since: Any, limit: int = 1000) -> list[dict[str, Any]]:
    return list(conn.execute(query("tasks_changed_since"), {"since": since, "limit": limit}))


def scheduled_after(conn: Conn, after: int, limit: int = 500) -> list[dict[str, Any]]:
    return list(conn.execute(query("schedule_tasks_after"), {"after": after, "limit": limit}))


def listen(conn: Conn, channel: str) -> None:
    """LISTEN on one of `protocol`'s channels (an identifier, so composed here rather than kept in a file)."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def database_now(conn: Conn) -> datetime:
    """The database's clock: cursors over row times are read on it, never on the operator's."""
    row = conn.execute(query("database_now")).fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


def max_task_id(conn: Conn) -> int:
    row = conn.execute(query("max_task_id")).fetchone()
    return int(row["id"]) if row else 0


def pool_load(conn: Conn, queues: Sequence[str]) -> scaling.Load:
    """What the pool's queues need now: tasks that can start (a queue's pause and limits leave the rest out,
    as `held`) and tasks in flight. Tasks due later, retries in their backoff included, need no worker yet."""
    rows = controls.startable(conn, queues)
    return scaling.Load(runnable=sum(int(r["startable"]) for r in rows), running=sum(int(r["running"]) for r in rows),
                        held=sum(int(r["runnable"]) - int(r["startable"]) for r in rows))

