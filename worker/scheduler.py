"""Fire due schedules: turn cron ticks into tasks, exactly once per tick, whoever runs the scheduler.

Every worker replica runs `fire_due` from housekeeping, so several schedulers race all the time. Each due
schedule is handled in its own short transaction: the row is locked with `FOR UPDATE SKIP LOCKED` (a second
scheduler skips it, or re-checks `next_run` after the first one committed and finds it no longer due), the
run is enqueued with the tick's time in `schedule_tick` (the unique index `tasks_schedule_tick` makes a
second run of one tick impossible even if the locking were bypassed), and `next_run` is advanced by
compare-and-set. The run and the advance commit together or not at all.

Cron arithmetic is croniter's on zone-aware datetimes, with one correction for daylight saving: when
clocks go back, a wall-clock time that happens twice fires only the first time, unless the hour field is
'*' (an hourly job then runs in both hours, as elapsed time demands). When clocks go forward, croniter moves
a tick inside the gap to the first instant after it, so a 02:30 daily job runs at 03:00 that day instead of
vanishing. All times returned are UTC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from croniter import croniter

from . import protocol, queries, queue
from .db import Conn
from .errors import InvalidInput
from .settings import Settings

log = logging.getLogger(__name__)

_WALK_LIMIT = 1000  # ticks walked one by one before jumping straight to the latest one
MIN_SKIP_TOLERANCE = 60.0  # seconds late a tick may still fire under missedRunPolicy Skip


def expand(cron: str) -> str:
    return protocol.CRON_MACROS.get(cron.strip().lower(), cron)


def _repeated(tick: datetime, cron: str) -> bool:
    """A second occurrence of a wall-clock time (clocks went back) that a fixed-hour schedule must not rerun."""
    if expand(cron).split()[1].startswith("*"):
        return False
    return tick.fold == 1 and tick.replace(fold=0).utcoffset() != tick.utcoffset()


def next_tick(cron: str, time_zone: str, after: datetime) -> datetime | None:
    """The first tick strictly after `after`, in UTC; None when the expression never fires again."""
    it = croniter(expand(cron), after.astimezone(ZoneInfo(time_zone)))
    for _ in range(3):  # at most one repeated time to step over
        try:
            tick: datetime = it.get_next(datetime)
        except (ValueError, KeyError):  # croniter's "failed to find next date" (CroniterBadDateError)
            return None
        if not _repeated(tick, cron):
            return tick.astimezone(UTC)
    return None


def prev_tick(cron: str, time_zone: str, at_or_before: datetime) -> datetime | None:
    """The last tick at or before `at_or_before`, in UTC."""
    it = croniter(expand(cron), at_or_before.astimezone(ZoneInfo(time_zone)))
    for _ in range(3):
        try:
            tick: datetime = it.get_prev(datetime)
        except (ValueError, KeyError):
            return None
        if not _repeated(tick, cron):
            break
    else:
        return None
    following = next_tick(cron, time_zone, tick)
    if following is not None and following <= at_or_before:
        return following  # croniter's get_prev is strict: `at_or_before` itself was a tick
    return tick.astimezone(UTC)


def latest_due(cron: str, time_zone: str, first: datetime, now: datetime) -> tuple[datetime, int]:
    """The latest tick in [first, now] and how many ticks before it were missed; `first` is a due tick."""
    tick, missed = first, 0
    for _ in range(_WALK_LIMIT):
        following = next_tick(cron, time_zone, tick)
        if following is None or following > now:
            return tick, missed
        tick, missed = following, missed + 1
    latest = prev_tick(cron, time_zone, now) or tick
    return latest, missed + 1  # "at least": the exact count is not worth walking for


@dataclass(frozen=True)
class Decision:
    """What to do with a due schedule: fire `tick` or not, and why (for logs and tests)."""

    tick: datetime
    fire: bool
    reason: str
    missed: int


def decide(row: dict[str, Any], now: datetime, settings: Settings) -> Decision:
    """Pure policy: which tick is due and whether the missed-run policy and deadline let it fire."""
    tick, missed = latest_due(row["cron"], row["time_zone"], row["next_run"], now)
    late = (now - tick).total_seconds()
    deadline: int | None = row["starting_deadline_seconds"]
    if row["missed_run_policy"] == "Skip":
        tolerance = deadline if deadline is not None else skip_tolerance(settings).total_seconds()
        if late > tolerance:
            return Decision(tick, False, f"missed (Skip): {late:.0f}s late, tolerance {tolerance:.0f}s", missed)
        return Decision(tick, True, "due" if not missed else f"due, {missed} earlier tick(s) skipped", missed)
    if deadline is not None and late > deadline:
        return Decision(tick, False, f"missed: {late:.0f}s late, startingDeadlineSeconds {deadline}", missed)
    return Decision(tick, True, "due" if not missed else f"due, once for {missed + 1} ticks (RunOnce)", missed)


def skip_tolerance(settings: Settings) -> timedelta:
    """How late an on-time tick may fire under Skip without a deadline: a scheduler pass or two, at least 60s."""
    return timedelta(seconds=max(MIN_SKIP_TOLERANCE, 2 * settings.worker.scheduler_interval.total_seconds()))


def dedup_key(name: str) -> str:
    return f"schedule:{name}"


def enqueue_run(conn: Conn, row: dict[str, Any], settings: Settings, tick: datetime | None) -> queue.Task | None:
    """Enqueue one run of a schedule; None when this tick already has a run (another scheduler won)."""
    try:
        with conn.transaction():  # a savepoint: a duplicate tick must not abort the caller's transaction
            return queue.enqueue(
                conn, row["actor"], row["args"], queue=row["queue"], priority=row["priority"],
                max_retries=row["max_retries"], time_limit=row["time_limit"], retry_backoff=row["retry_backoff"],
                schedule_name=row["name"],
                schedule_tick=tick, dedup_key=dedup_key(row["name"]) if row["deduplicate"] else None,
                validate=False, settings=settings)
    except psycopg.errors.UniqueViolation:
        return None


def fire_due(conn: Conn, settings: Settings, now: datetime | None = None, *, limit: int = 1000) -> list[int]:
    """Fire every due, unpaused schedule (at most `limit`); return the ids of the tasks created."""
    created: list[int] = []
    done: list[str] = []
    for _ in range(limit):
        fired: list[int] = []
        name: str | None = None
        try:
            with conn.transaction():
                at = now if now is not None else db_now(conn)
                row = conn.execute(queries.get("schedule_lock_due"), {"now": at, "done": done}).fetchone()
                if row is None:
                    break
                name = row["name"]
                done.append(row["name"])
                fired = _fire(conn, row, at, settings)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection is gone: housekeeping reconnects
        except Exception:
            if name is None:
                raise  # not about one schedule (schema missing…): nothing to skip past
            # One broken schedule must not stop the others; it is retried on the next pass.
            log.exception("schedule %s: firing failed, rolled back", name)
            continue
        created.extend(fired)
    return created


def db_now(conn: Conn) -> datetime:
    # The database's clock, so replicas with skewed clocks agree on what is due.
    row = conn.execute("SELECT clock_timestamp() AS now").fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


def _fire(conn: Conn, row: dict[str, Any], now: datetime, settings: Settings) -> list[int]:
    name = row["name"]
    decision = decide(row, now, settings)
    fire, reason = decision.fire, decision.reason
    created: list[int] = []
    if fire and row["concurrency_policy"] != "Allow":
        live = [r["id"] for r in conn.execute(queries.get("schedule_live_runs"), {"name": name})]
        if live and row["concurrency_policy"] == "Forbid":
            fire, reason = False, f"skipped (Forbid): run {live[-1]} is still queued or running"
        for task_id in live if row["concurrency_policy"] == "Replace" else ():
            queue.cancel_task(conn, task_id, f"replaced by the run of {name} due {decision.tick.isoformat()}")
    if fire:
        try:
            task = enqueue_run(conn, row, settings, decision.tick)
        except InvalidInput as exc:  # e.g. args over a limit lowered since apply: skip, do not spin
            task, reason = None, f"not enqueued: {exc}"
            log.error("schedule %s: %s", name, reason)
        if task is not None and task.created:
            created.append(task.id)
            reason += f", task {task.id}"
        elif task is not None:
            reason = f"skipped (deduplicate): run {task.id} is still queued or running"
    following = next_tick(row["cron"], row["time_zone"], now)  # no tick lies in (decision.tick, now]
    advanced = conn.execute(queries.get("schedule_advance"), {
        "name": name, "expected": row["next_run"], "next_run": following,
        "last_run": now if created else None}).fetchone()
    if advanced is None:  # the row is locked by us, so only a bug gets here; roll the run back with it
        raise RuntimeError(f"schedule {name}: next_run changed under the scheduler's lock")
    conn.execute(queries.get("schedule_prune_history"), {
        "name": name, "keep_successful": row["successful_runs_history_limit"],
        "keep_failed": row["failed_runs_history_limit"]})
    log.info("schedule %s tick %s: %s; next run %s", name, decision.tick.isoformat(), reason,
             following.isoformat() if following else "never")
    return created

