"""Enqueue tasks and operate on them: the queue's public API.

`enqueue` joins the caller's transaction when given a connection inside one; the NOTIFY the trigger
sends is delivered only on commit, so workers never see a task that was rolled back.

The statements are in `sql/tasks.sql`; only the optional filters of `list_tasks` and `delete_tasks` are
composed here (`TaskFilter.where`), into the `{filters}` slot of their named queries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, LiteralString

from psycopg import sql
from psycopg.types.json import Jsonb

from . import notifyrules, protocol, queries, registry, tracing
from .db import Conn
from .errors import InvalidInput, TaskNotFound
from .settings import Settings, get_settings


@dataclass(frozen=True)
class Task:
    id: int
    queue: str
    actor: str
    args: Any
    state: str
    reason: str
    priority: int
    eta: datetime
    attempts: int
    max_retries: int
    time_limit: float
    retry_backoff: float | None
    worker: str | None
    result: Any
    error: str | None
    schedule_name: str | None
    schedule_tick: datetime | None
    object_ref: str | None
    dedup_key: str | None
    created_at: datetime
    started_at: datetime | None
    attempt_started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    created: bool = True  # False when a dedup key returned a task that already existed
    parent_id: int | None = None  # the workflow this task is a child of (workflows.py)
    step: int | None = None  # its step in that workflow
    traceparent: str | None = None  # W3C trace context of its enqueue, when traced (spans.py)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or self.updated_at
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def retrying(self) -> bool:
        return self.state == "running" and self.worker is None

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "created"}
        data["duration"] = self.duration
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


def encode_args(args: Any, limit: int, field: str = "args") -> str:
    """JSON text of a task's args, refused when it is not JSON or larger than `limit` bytes."""
    if args is None:
        args = {}
    if not isinstance(args, dict | list):
        raise InvalidInput(field, f"must be a JSON object (keyword arguments) or array, not {type(args).__name__}",
                           'pass e.g. {"url": "https://example.com"}')
    try:
        text = json.dumps(args, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"is not JSON-serialisable: {exc}",
                           "pass only dicts, lists, strings, numbers, booleans and null") from exc
    if "\\u0000" in text and _contains_nul(args):
        raise InvalidInput(field, "contains a NUL character, which PostgreSQL cannot store", "remove it")
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise InvalidInput(field, f"is not valid UTF-8 text ({exc.reason} at position {exc.start})",
                           "remove lone surrogates such as '\\ud800' from strings") from exc
    if size > limit:
        raise InvalidInput(field, f"is {size} bytes of JSON, more than the limit of {limit}",
                           "store large payloads elsewhere and pass a reference, "
                           "or raise KUBETASKS_WORKER__ARGS_MAX_BYTES")
    return text


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _resolve(actor: str | registry.Actor, validate: bool) -> tuple[str, registry.Actor | None]:
    if isinstance(actor, registry.Actor):
        return actor.name, actor
    name = registry.validate_name(actor)
    if validate:
        return name, registry.get(name)
    try:
        return name, registry.get(name)
    except InvalidInput:
        return name, None


def row_params(actor: str | registry.Actor, args: Any, *, queue: str | None, eta: datetime | None,
                priority: int | None, max_retries: int | None, time_limit: float | None, retry_backoff: float | None,
                schedule_name: str | None, schedule_tick: datetime | None, object_ref: str | None,
                dedup_key: str | None, validate: bool, settings: Settings) -> dict[str, Any]:
    name, declared = _resolve(actor, validate)
    if max_retries is not None and max_retries < 0:
        raise InvalidInput("max_retries", f"{max_retries} is negative", "use 0 or more")
    if time_limit is not None and not time_limit > 0:
        raise InvalidInput("time_limit", f"{time_limit} is not positive", "give seconds > 0")
    if retry_backoff is not None and not retry_backoff > 0:
        raise InvalidInput("retry_backoff", f"{retry_backoff} is not positive", "give seconds > 0, or None")
    if eta is not None and eta.tzinfo is None:
        raise InvalidInput("eta", "is a naive datetime", "give a timezone-aware datetime, e.g. in UTC")
    if dedup_key is not None and not 1 <= len(dedup_key) <= 512:
        raise InvalidInput("dedup_key", "must be 1 to 512 characters long", "shorten or hash it")
    if dedup_key is not None and (_contains_nul(dedup_key) or not dedup_key.isprintable()):
        raise InvalidInput("dedup_key", "contains control characters", "use printable text, or hash it")
    worker = settings.worker
    return {
        "actor": name,
        "args": encode_args(args, worker.args_max_bytes),
        "queue": registry.validate_queue(queue or (declared.queue if declared else "default")),
        "eta": eta,
        "priority": priority if priority is not None else (declared.priority if declared else 0),
        "max_retries": next(v for v in (max_retries, declared and declared.max_retries,
                                        worker.task_max_retries) if v is not None),
        "time_limit": next(v for v in (time_limit, declared and declared.time_limit,
                                       worker.task_default_time_limit.total_seconds()) if v is not None),
        "retry_backoff": retry_backoff if retry_backoff is not None else (declared and declared.retry_backoff),
        "schedule_name": schedule_name,
        "schedule_tick": schedule_tick,
        "object_ref": object_ref,
        "dedup_key": dedup_key,
    }


def enqueue(conn: Conn, actor: str | registry.Actor, args: Any = None, *, queue: str | None = None,
            eta: datetime | None = None, priority: int | None = None, max_retries: int | None = None,
            time_limit: float | None = None, retry_backoff: float | None = None, dedup_key: str | None = None,
            schedule_name: str | None = None,
            schedule_tick: datetime | None = None, object_ref: str | None = None, validate: bool = True,
            settings: Settings | None = None,
            notify: Sequence[notifyrules.NotificationRule | dict[str, Any]] | None = None) -> Task:
    """Insert one task. With `dedup_key`, a live task holding that key is returned instead (`created=False`).
    `notify`: notification rules (else the actor's), stored on the row."""
    settings = settings or get_settings()
    params = row_params(actor, args, queue=queue, eta=eta, priority=priority, max_retries=max_retries,
                         time_limit=time_limit, retry_backoff=retry_backoff, schedule_name=schedule_name,
                         schedule_tick=schedule_tick,
                         object_ref=object_ref, dedup_key=dedup_key, validate=validate,
                         settings=settings)
    params["args"] = Jsonb(json.loads(params["args"]))
    rules = task_rules(actor, notify)
    params["notify"] = Jsonb(rules) if rules is not None else None
    traced = tracing.get(settings)
    if traced is None:
        params["traceparent"] = None
        return _insert(conn, params)
    with traced.enqueue(params["actor"], params["queue"]) as span:
        params["traceparent"] = span.traceparent
        task = _insert(conn, params)
        span.inserted(task.id, task.created)
    return task


def _insert(conn: Conn, params: dict[str, Any]) -> Task:
    # A concurrent insert of the same dedup key may commit after our snapshot: ask again.
    for _ in range(5):
        row = conn.execute(queries.get("task_insert"), params).fetchone()
        if row is not None:
            return Task.from_row(row)
    raise RuntimeError(f"could not insert or find the task with dedup key {params['dedup_key']!r}")


def task_rules(actor: str | registry.Actor,
               notify: Sequence[notifyrules.NotificationRule | dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A task's notification rules as stored: those given, else its actor's; None when there are none."""
    return notifyrules.dump(notifyrules.parse(notify) if notify is not None else _actor_rules(actor))


def _actor_rules(actor: str | registry.Actor) -> list[notifyrules.NotificationRule]:
    declared = actor if isinstance(actor, registry.Actor) else registry.find(actor)
    return list(declared.notify) if declared is not None else []


def enqueue_many(conn: Conn, actor: str | registry.Actor, many_args: Iterable[Any], *,
                 queue: str | None = None, priority: int | None = None, max_retries: int | None = None,
                 time_limit: float | None = None, validate: bool = True,
                 settings: Settings | None = None,
                 notify: Sequence[notifyrules.NotificationRule | dict[str, Any]] | None = None) -> int:
    """Bulk enqueue with COPY (no dedup keys, no eta); one wake-up per queue. Returns the count.
    `notify`: notification rules of every task (else the actor's), as with `enqueue`."""
    settings = settings or get_settings()
    template = row_params(actor, {}, queue=queue, eta=None, priority=priority, max_retries=max_retries,
                           time_limit=time_limit, retry_backoff=None, schedule_name=None, schedule_tick=None,
                           object_ref=None,
                           dedup_key=None, validate=validate, settings=settings)
    rules = task_rules(actor, notify)
    rules_text = json.dumps(rules, separators=(",", ":")) if rules is not None else None  # COPY takes text
    traced = tracing.get(settings)
    if traced is None:
        return _copy_in(conn, template, many_args, rules_text, None, settings.worker.args_max_bytes)
    with traced.enqueue(template["actor"], template["queue"]) as span:
        count = _copy_in(conn, template, many_args, rules_text, span.traceparent, settings.worker.args_max_bytes)
        span.counted(count)
    return count


def _copy_in(conn: Conn, template: dict[str, Any], many_args: Iterable[Any], rules: str | None,
             traceparent: str | None, limit: int) -> int:
    count = 0
    with conn.cursor().copy(queries.get("task_copy_in")) as copy:
        for index, args in enumerate(many_args):  # in the column order of task_copy_in
            text = encode_args(args, limit, field=f"args[{index}]")
            copy.write_row((template["queue"], template["actor"], text, template["priority"],
                            template["max_retries"], template["time_limit"], rules, traceparent))
            count += 1
    return count


def get_task(conn: Conn, task_id: int) -> Task:
    row = conn.execute(queries.get("task_get"), {"id": task_id}).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return Task.from_row(row)


def attempts(conn: Conn, task_id: int) -> list[dict[str, Any]]:
    return list(conn.execute(queries.get("attempt_list"), {"id": task_id}))


def retry_task(conn: Conn, task_id: int) -> Task:
    """Queue a finished task again. Refused for a task that is still queued or running. A workflow re-runs the
    failed children of the step where it stopped (workflows.retry)."""
    if get_task(conn, task_id).actor == protocol.WORKFLOW_ACTOR:
        row = conn.execute(queries.get("workflow_retry"), {"id": task_id}).fetchone()
        if row is None or row["requeued"] is None:
            raise InvalidInput("id", f"workflow {task_id} is {get_task(conn, task_id).state}",
                               "only a workflow in error or cancelled can be retried")
        return get_task(conn, task_id)
    row = conn.execute(queries.get("task_retry"), {"id": task_id}).fetchone()
    if row is None:
        task = get_task(conn, task_id)
        raise InvalidInput("id", f"task {task_id} is {task.state}", "only finished tasks can be retried")
    conn.execute(queries.get("queue_notify"), {
        "channel": protocol.QUEUE_CHANNEL, "payload": protocol.encode_wakeup(row["queue"], row["id"])})
    return Task.from_row(row)


def cancel_task(conn: Conn, task_id: int, message: str | None = None) -> Task | None:
    """Cancel a task not yet finished; None when it had already finished. A workflow's unfinished children are
    cancelled with it (workflows.cancel)."""
    if get_task(conn, task_id).actor == protocol.WORKFLOW_ACTOR:
        found = conn.execute(queries.get("workflow_cancel"), {"id": task_id, "message": message}).fetchone()
        return None if found is None or found["cancelled"] is None else get_task(conn, task_id)
    row = conn.execute(queries.get("task_cancel"), {"id": task_id, "message": message}).fetchone()
    if row is None:
        get_task(conn, task_id)  # raises TaskNotFound when it does not exist
        return None
    return Task.from_row(row)


@dataclass(frozen=True)
class TaskFilter:
    states: Sequence[str] = ()
    actors: Sequence[str] = ()
    queues: Sequence[str] = ()
    schedule: str | None = None
    object_ref: str | None = None
    exclude_successful: bool = False
    top_level: bool = False  # hide the children of workflows

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        clauses: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for value in self.states:
            if value not in protocol.STATES:
                raise InvalidInput("state", f"unknown state {value!r}", "use one of " + ", ".join(protocol.STATES))
        # Columns compared as they are stored (the enum, not state::text), so their indexes can serve.
        if self.states:
            clauses.append(sql.SQL("state = ANY(%(states)s::kubetasks.task_state[])"))
            params["states"] = list(self.states)
        if self.actors:
            clauses.append(sql.SQL("actor = ANY(%(actors)s)"))
            params["actors"] = list(self.actors)
        if self.queues:
            clauses.append(sql.SQL("queue = ANY(%(queues)s)"))
            params["queues"] = list(self.queues)
        if self.schedule is not None:
            clauses.append(sql.SQL("schedule_name = %(schedule)s"))
            params["schedule"] = self.schedule
        if self.object_ref is not None:
            clauses.append(sql.SQL("object_ref = %(object_ref)s"))
            params["object_ref"] = self.object_ref
        if self.exclude_successful:
            clauses.append(sql.SQL("state <> 'successful'"))
        if self.top_level:
            clauses.append(sql.SQL("parent_id IS NULL"))
        if not clauses:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(clauses), params

    def branches(self) -> list[LiteralString]:
        """Conditions equivalent to the state filter (the table's CHECK ties finished_at to the state), one per
        branch of a newest-first list, that let the planner read the partial indexes: tasks_unfinished for live
        rows; tasks_finished_by_state, tasks_finished_by_actor and tasks_finished_unsuccessful for finished ones.
        An actor filter without a one-sided state filter reads the two halves apart, since only finished rows
        are in the actor index (migration 0010)."""
        states = set(self.states)
        if states and states <= set(protocol.LIVE_STATES):
            return ["finished_at IS NULL"]
        if states and states <= set(protocol.FINAL_STATES):
            return ["finished_at IS NOT NULL"]
        if self.exclude_successful and not states:
            return ["finished_at IS NULL", "finished_at IS NOT NULL AND state <> 'successful'"]
        if self.actors:
            return ["finished_at IS NULL", "finished_at IS NOT NULL"]
        return ["true"]


def list_statement(where: sql.Composable, params: dict[str, Any], branches: Sequence[LiteralString], *,
                   limit: int, before_id: int | None = None) -> tuple[sql.Composed, dict[str, Any]]:
    """A newest-first page (task_list) of the rows matching `where`: one branch per condition of `branches`
    (TaskFilter.branches), merged by task_list_merge when there are several; keyset pagination on id."""
    if before_id is not None:
        where = sql.SQL("{} AND id < %(before_id)s").format(where)
        params = {**params, "before_id": before_id}
    params = {**params, "limit": limit}
    parts = [sql.SQL(queries.get("task_list")).format(filters=sql.SQL("{} AND {}").format(where, sql.SQL(branch)))
             for branch in branches]
    if len(parts) == 1:
        return parts[0], params
    merged = sql.SQL(" UNION ALL ").join(sql.SQL("({})").format(part) for part in parts)
    return sql.SQL(queries.get("task_list_merge")).format(branches=merged), params


def list_tasks(conn: Conn, filters: TaskFilter = TaskFilter(), *, limit: int = 100,
               before_id: int | None = None) -> list[Task]:
    """Newest first, at most `limit` (keyset pagination with `before_id`)."""
    where, params = filters.where()
    query, params = list_statement(where, params, filters.branches(), limit=limit, before_id=before_id)
    return [Task.from_row(row) for row in conn.execute(query, params)]


def delete_tasks(conn: Conn, filters: TaskFilter, *, include_unfinished: bool = False) -> int:
    """Delete the tasks matching `filters`. Unfinished ones only when asked, so a worker's task is never pulled
    from under it by accident."""
    if not (filters.states or filters.actors or filters.queues or filters.schedule or filters.object_ref):
        raise InvalidInput("filters", "deleting every task needs at least one filter",
                           "pass --state, --actor, --queue or --schedule")
    where, params = filters.where()
    params["include_unfinished"] = include_unfinished
    cur = conn.execute(sql.SQL(queries.get("task_delete_matching")).format(filters=where), params)
    return cur.rowcount


def flush_queue(conn: Conn, queue: str) -> int:
    """Delete the tasks waiting in a queue (not yet started); running ones finish normally."""
    registry.validate_queue(queue)
    cur = conn.execute(queries.get("queue_flush"), {"queue": queue})
    return cur.rowcount


def stats(conn: Conn) -> list[dict[str, Any]]:
    """Task counts by actor and state."""
    return list(conn.execute(queries.get("task_stats")))


def queue_depth(conn: Conn) -> list[dict[str, Any]]:
    """Runnable, delayed and executing tasks per queue."""
    return list(conn.execute(queries.get("queue_count_tasks")))


def purge(conn: Conn, older_than_seconds: float, batch: int, max_batches: int = 1000) -> int:
    """Delete finished tasks older than the cutoff, one short transaction per batch."""
    total = 0
    query: LiteralString = queries.get("task_purge_batch")
    for _ in range(max_batches):
        with conn.transaction():
            deleted = conn.execute(query, {"older_than": older_than_seconds, "limit": batch}).rowcount
        total += deleted
        if deleted < batch:
            break
    return total
