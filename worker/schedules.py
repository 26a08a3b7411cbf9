"""Stored schedules: apply a spec, read, pause, resume, trigger, delete, and look at past runs.

A schedule row is keyed "<namespace>/<name>". Manifests (`kubetasks apply`), the operator (Schedule
custom resources) and the CLI all go through `apply`, so validation and the next_run rules live here once:
a new schedule, a changed cron or time zone, or a schedule un-suspended by its spec gets `next_run` = the
next tick from now; any other change keeps the pending tick. Resuming by hand is different on purpose:
`resume` starts one run at once (the user asked for the schedule back) and then waits for the next tick.

This is storage and runs started by hand; firing ticks on time is `scheduler`'s job, which builds on this
module (never the other way round), and the tick arithmetic both use is `cron`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import cron, db, durations, manifests, notifyrules, queries, queue, registry
from .db import Conn
from .errors import InvalidInput, UnknownActor
from .manifests import ScheduleSpec
from .settings import Settings, get_settings

# Columns compared to tell "configured" from "unchanged" on apply.
_SPEC_COLUMNS = ("actor", "args", "queue", "cron", "time_zone", "paused", "concurrency_policy",
                 "missed_run_policy", "starting_deadline_seconds", "time_limit", "max_retries", "retry_backoff",
                 "priority", "deduplicate", "successful_runs_history_limit", "failed_runs_history_limit", "source",
                 "notify", "catchup_window", "catchup_max_runs", "jitter", "start_time", "end_time",
                 "pause_after_failures")
# Columns that decide which ticks exist: a change recomputes next_run.
_TICK_COLUMNS = ("cron", "time_zone", "start_time", "end_time")


class ScheduleNotFound(InvalidInput, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__("name", f"schedule {name!r} does not exist",
                         "list schedules with `kubetasks schedules list`; names are '<namespace>/<name>'")


def columns(name: str, spec: ScheduleSpec, source: str) -> dict[str, Any]:
    """The row a spec becomes (without next_run)."""
    return {
        "name": name, "actor": spec.actor, "args": spec.args, "queue": spec.queue, "cron": spec.expression,
        "time_zone": spec.time_zone, "paused": spec.suspend, "concurrency_policy": spec.concurrency_policy,
        "missed_run_policy": spec.missed_run_policy,
        "starting_deadline_seconds": spec.starting_deadline_seconds, "time_limit": spec.time_limit_seconds,
        "max_retries": spec.retries.limit, "retry_backoff": spec.retries.backoff_seconds,
        "priority": spec.priority, "deduplicate": spec.deduplicate,
        "successful_runs_history_limit": spec.successful_runs_history_limit,
        "failed_runs_history_limit": spec.failed_runs_history_limit, "source": source,
        "notify": notifyrules.dump(spec.notifications),
        "catchup_window": _seconds(spec.catchup_window), "catchup_max_runs": spec.max_catchup_runs,
        "jitter": _seconds(spec.jitter), "start_time": spec.times[0], "end_time": spec.times[1],
        "pause_after_failures": spec.pause_after_failures,
    }


def _seconds(duration: str | int | None) -> float | None:
    return None if duration is None else float(durations.parse(duration))


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else durations.format_seconds(seconds)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_bounds(row: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """(start_time, end_time) of a stored row: the range its ticks lie in."""
    return row.get("start_time"), row.get("end_time")


def spec_of(row: dict[str, Any]) -> ScheduleSpec:
    """The spec a stored row stands for (what `schedules show` prints and the operator compares)."""
    every = cron.interval_of(row["cron"])
    return ScheduleSpec(
        actor=row["actor"], args=row["args"], queue=row["queue"],
        schedule=None if every is not None else row["cron"],
        every=durations.format_seconds(every.total_seconds()) if every is not None else None,
        time_zone=row["time_zone"], suspend=row["paused"], concurrency_policy=row["concurrency_policy"],
        missed_run_policy=row["missed_run_policy"], starting_deadline_seconds=row["starting_deadline_seconds"],
        time_limit_seconds=row["time_limit"],
        retries=manifests.RetryPolicy(limit=row["max_retries"], backoff_seconds=row["retry_backoff"]),
        deduplicate=row["deduplicate"], priority=row["priority"],
        successful_runs_history_limit=row["successful_runs_history_limit"],
        failed_runs_history_limit=row["failed_runs_history_limit"],
        notifications=notifyrules.parse(row.get("notify"), field="notify"),
        catchup_window=_duration(row.get("catchup_window")), max_catchup_runs=row.get("catchup_max_runs") or 100,
        jitter=_duration(row.get("jitter")), start_time=_time(row.get("start_time")),
        end_time=_time(row.get("end_time")), pause_after_failures=row.get("pause_after_failures"))


def validate(name: str, spec: ScheduleSpec, *, validate_actor: bool = True,
             settings: Settings | None = None) -> None:
    """Everything `apply` checks before touching the database (so a batch can be checked up front)."""
    manifests.check_schedule_name(name)
    if validate_actor and spec.actor not in registry.names():
        raise UnknownActor(spec.actor, field="spec.actor", known=registry.names())
    queue.encode_args(spec.args, (settings or get_settings()).worker.args_max_bytes, field="spec.args")


def apply(conn: Conn, name: str, spec: ScheduleSpec, source: str = "manifest", *, validate_actor: bool = True,
          settings: Settings | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Create or update a schedule; return its row with `action`: created, configured or unchanged."""
    validate(name, spec, validate_actor=validate_actor, settings=settings)
    wanted = columns(name, spec, source)
    with conn.transaction():
        at = now or db.now(conn)
        old = conn.execute(queries.get("schedule_lock"), {"name": name}).fetchone()
        # A schedule that paused itself after failures stays paused through an unchanged spec's re-apply
        # (the operator re-applies often); resuming, or suspend: true then false, lets it go.
        self_paused = old is not None and old["paused_reason"] is not None and not spec.suspend
        if self_paused:
            wanted["paused"] = True
        wanted["paused_reason"] = old["paused_reason"] if self_paused and old is not None else None
        if old is not None and all(_same(old[c], wanted[c]) for c in (*_SPEC_COLUMNS, "paused_reason")):
            return {**get(conn, name), "action": "unchanged"}
        next_run = old["next_run"] if old is not None else None
        start, end = spec.times
        if (next_run is None or old is None or any(old[c] != wanted[c] for c in _TICK_COLUMNS)
                or (old["paused"] and not wanted["paused"])):
            next_run = cron.next_tick(spec.expression, spec.time_zone, at, start, end)
        conn.execute(queries.get("schedule_upsert"), {
            **wanted, "args": Jsonb(spec.args), "next_run": next_run,
            "notify": Jsonb(wanted["notify"]) if wanted["notify"] is not None else None})
    return {**get(conn, name), "action": "created" if old is None else "configured"}


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return json.dumps(stored, sort_keys=True) == json.dumps(wanted, sort_keys=True)
    return bool(stored == wanted)


def get(conn: Conn, name: str) -> dict[str, Any]:
    row = conn.execute(queries.get("schedule_get"), {"name": name}).fetchone()
    if row is None:
        raise ScheduleNotFound(name)
    return _public(row)


def list_schedules(conn: Conn) -> list[dict[str, Any]]:
    return [_public(row) for row in conn.execute(queries.get("schedule_list"))]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    # last_success as users mean it: the newest finished success, whether or not the scheduler noted it yet.
    out = dict(row)
    out["last_success"] = out.pop("last_success_at")
    return out


def delete(conn: Conn, name: str, *, missing_ok: bool = False) -> bool:
    """Remove a schedule (its past runs stay until purged); False when it did not exist and missing_ok."""
    row = conn.execute(queries.get("schedule_delete"), {"name": name}).fetchone()
    if row is None and not missing_ok:
        raise ScheduleNotFound(name)
    return row is not None


def pause(conn: Conn, name: str) -> dict[str, Any]:
    """Stop starting runs; the pending tick is kept so `get` still shows what was next."""
    if conn.execute(queries.get("schedule_set_paused"),
                    {"name": name, "paused": True, "next_run": None}).fetchone() is None:
        raise ScheduleNotFound(name)
    return get(conn, name)


def resume(conn: Conn, name: str, *, settings: Settings | None = None,
           now: datetime | None = None) -> dict[str, Any]:
    """Un-pause: start one run at once, then wait for the next tick from now. Returns the row and `task_id`."""
    settings = settings or get_settings()
    with conn.transaction():
        at = now or db.now(conn)
        row = _lock(conn, name)
        if not row["paused"]:
            raise InvalidInput("name", f"schedule {name!r} is not paused",
                               "use `kubetasks schedules trigger` to start a run now")
        task = enqueue_run(conn, row, settings, tick=None)
        next_run = cron.next_tick(row["cron"], row["time_zone"], at, *tick_bounds(row))
        conn.execute(queries.get("schedule_set_paused"), {"name": name, "paused": False, "next_run": next_run})
        conn.execute(queries.get("schedule_mark_run"), {"name": name, "now": at})
    return {**get(conn, name), "task_id": task.id if task else None,
            "task_created": bool(task and task.created)}


def trigger(conn: Conn, name: str, *, settings: Settings | None = None,
            now: datetime | None = None) -> queue.Task:
    """Start one run now without moving next_run; works while paused. With `deduplicate`, a live run is
    returned instead (`created` is False)."""
    with conn.transaction():
        row = _lock(conn, name)
        task = enqueue_run(conn, row, settings or get_settings(), tick=None)
        if task is None:  # only a tick can collide, and a trigger has none
            raise RuntimeError(f"schedule {name}: trigger enqueued nothing")
        if task.created:
            conn.execute(queries.get("schedule_mark_run"), {"name": name, "now": now or db.now(conn)})
    return task


def dedup_key(name: str) -> str:
    return f"schedule:{name}"


def enqueue_run(conn: Conn, row: dict[str, Any], settings: Settings, tick: datetime | None) -> queue.Task | None:
    """Enqueue one run of a schedule row, for its cron `tick` or (None) by hand; None when this tick already
    has a run (another scheduler won). The firing engine calls it for ticks, `trigger` and `resume` without."""
    try:
        with conn.transaction():  # a savepoint: a duplicate tick must not abort the caller's transaction
            return queue.enqueue(
                conn, row["actor"], row["args"], queue=row["queue"], priority=row["priority"],
                max_retries=row["max_retries"], time_limit=row["time_limit"], retry_backoff=row["retry_backoff"],
                schedule_name=row["name"],
                schedule_tick=tick, dedup_key=dedup_key(row["name"]) if row["deduplicate"] else None,
                validate=False, settings=settings, notify=row.get("notify"))
    except psycopg.errors.UniqueViolation:
        return None


def history(conn: Conn, name: str, *, limit: int = 20) -> list[queue.Task]:
    """The schedule's runs, newest first (also after the schedule itself was deleted)."""
    return queue.list_tasks(conn, queue.TaskFilter(schedule=name), limit=limit)


def _lock(conn: Conn, name: str) -> dict[str, Any]:
    row = conn.execute(queries.get("schedule_lock"), {"name": name}).fetchone()
    if row is None:
        raise ScheduleNotFound(name)
    return row
