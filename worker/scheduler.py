"""Fire due schedules: turn cron ticks into tasks, exactly once per tick, whoever runs the scheduler.

Every worker replica (in its housekeeping) and the operator fire, so several schedulers race all the time.
Each due schedule is handled in its own short transaction: the row is locked with `FOR UPDATE SKIP LOCKED`
(a second scheduler skips it, or re-checks `next_run` after the first one committed and finds it no longer
due), the run is enqueued with the tick's time in `schedule_tick` (the unique index `tasks_schedule_tick`
makes a second run of one tick impossible even if the locking were bypassed), and `next_run` is advanced by
compare-and-set. The run and the advance commit together or not at all.

`FiringService` is the one loop policy for whoever fires: the worker's housekeeping and the operator (which
fires too, so schedules keep firing while a WorkerPool has scaled its workers to zero). A pass fires what is
due, then sleeps until the next schedule is due, at most one interval (a schedule applied meanwhile is seen
within one interval). Which ticks exist is `cron`'s arithmetic; the rows and runs are `schedules`'.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from . import cron, db, queries, queue, schedules
from .db import Conn
from .errors import InvalidInput
from .settings import Settings

log = logging.getLogger(__name__)

MIN_SKIP_TOLERANCE = 60.0  # seconds late a tick may still fire under missedRunPolicy Skip


@dataclass(frozen=True)
class Decision:
    """What to do with a due schedule: fire `tick` or not, and why (for logs and tests)."""

    tick: datetime
    fire: bool
    reason: str
    missed: int


def decide(row: dict[str, Any], now: datetime, settings: Settings) -> Decision:
    """Pure policy: which tick is due and whether the missed-run policy and deadline let it fire."""
    tick, missed = cron.latest_due(row["cron"], row["time_zone"], row["next_run"], now)
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


def fire_due(conn: Conn, settings: Settings, now: datetime | None = None, *, limit: int = 1000) -> list[int]:
    """Fire every due, unpaused schedule (at most `limit`); return the ids of the tasks created."""
    return _fire_pass(conn, settings, now, limit).created


@dataclass
class _Pass:
    created: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # schedules rolled back: retried next pass, not at once


def _fire_pass(conn: Conn, settings: Settings, now: datetime | None, limit: int) -> _Pass:
    result = _Pass()
    done: list[str] = []
    for _ in range(limit):
        fired: list[int] = []
        name: str | None = None
        try:
            with conn.transaction():
                at = now if now is not None else db.now(conn)
                row = conn.execute(queries.get("schedule_lock_due"), {"now": at, "done": done}).fetchone()
                if row is None:
                    break
                name = row["name"]
                done.append(row["name"])
                fired = _fire(conn, row, at, settings)
        except db.CONNECTION_ERRORS:
            raise  # the connection is gone: the caller reconnects
        except Exception:
            if name is None:
                raise  # not about one schedule (schema missing…): nothing to skip past
            # One broken schedule must not stop the others; it is retried on the next pass.
            log.exception("schedule %s: firing failed, rolled back", name)
            result.failed.append(name)
            continue
        result.created.extend(fired)
    return result


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
            task = schedules.enqueue_run(conn, row, settings, decision.tick)
        except InvalidInput as exc:  # e.g. args over a limit lowered since apply: skip, do not spin
            task, reason = None, f"not enqueued: {exc}"
            log.error("schedule %s: %s", name, reason)
        if task is not None and task.created:
            created.append(task.id)
            reason += f", task {task.id}"
        elif task is not None:
            reason = f"skipped (deduplicate): run {task.id} is still queued or running"
    following = cron.next_tick(row["cron"], row["time_zone"], now)  # no tick lies in (decision.tick, now]
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



MIN_WAIT = 0.05  # seconds: the shortest sleep between passes, so an overdue schedule cannot spin a loop


class FiringService:
    """Fire due schedules on time, for the worker's housekeeping and the operator alike.

    `run_due` is one pass; `next_wait` says how long to sleep after it: until the next unpaused schedule is
    due, but at most `interval` seconds and at least MIN_WAIT. Schedules whose firing failed in the last pass
    do not count as due (they would otherwise be due at once, every MIN_WAIT); they are retried after an
    interval. `serve` is the loop for a thread of its own (the operator's); housekeeping interleaves the
    same two calls with its other jobs on its own connection.
    """

    def __init__(self, settings: Settings, interval: float) -> None:
        self.settings = settings
        self.interval = interval
        self.fired = 0  # tasks created so far
        self._failed: list[str] = []

    def run_due(self, conn: Conn, now: datetime | None = None) -> list[int]:
        """Fire every due schedule once; return the ids of the tasks created."""
        result = _fire_pass(conn, self.settings, now, limit=1000)
        self._failed = result.failed
        self.fired += len(result.created)
        return result.created

    def seconds_until_next(self, conn: Conn) -> float | None:
        """Seconds until the earliest unpaused schedule (not failed in the last pass) is due; None: none is."""
        row = conn.execute(queries.get("schedule_next_due"), {"skip": self._failed}).fetchone()
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    def next_wait(self, conn: Conn) -> float:
        due = self.seconds_until_next(conn)
        return self.interval if due is None else min(self.interval, max(MIN_WAIT, due))

    def serve(self, connection: Callable[[], AbstractContextManager[Conn]], stopping: threading.Event) -> None:
        """Pass after pass until `stopping` is set, taking a connection for each (from a pool, say). A pass
        that fails is logged and the next one comes an interval later."""
        wait = 0.0
        while not stopping.wait(wait):
            wait = self.interval
            try:
                with connection() as conn:
                    self.run_due(conn)
                    wait = self.next_wait(conn)
            except psycopg.Error as exc:
                log.warning("scheduler: %s", exc)
            except Exception:
                log.exception("scheduler: firing due schedules failed")
