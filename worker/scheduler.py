"""Fire due schedules: turn cron ticks into tasks, exactly once per tick, whoever runs the scheduler.

Every worker replica (in its housekeeping) and the operator fire, so several schedulers race all the time.
Due schedules are handled in batches, one transaction per batch: the rows are locked with `FOR UPDATE SKIP
LOCKED` (a second scheduler skips them, or re-checks `next_run` after the first one committed and finds them
no longer due), each run is enqueued with the tick's time in `schedule_tick` (the unique index
`tasks_schedule_tick` makes a second run of one tick impossible even if the locking were bypassed), and
`next_run` is advanced by compare-and-set. A run and its advance commit together or not at all.

`FiringService` is the one loop policy for whoever fires: the worker's housekeeping and the operator (which
fires too, so schedules keep firing while a WorkerPool has scaled its workers to zero). A pass fires what is
due, then sleeps until the next schedule is due, at most one interval (a schedule applied meanwhile is seen
within one interval). Which ticks exist is `cron`'s arithmetic; the rows and runs are `schedules`'.
"""

from __future__ import annotations

import functools
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

# Cron arithmetic is pure and schedules due together mostly share cron, zone and ticks: a batch of them
# costs one croniter walk, not one each.
_latest_due = functools.lru_cache(maxsize=4096)(cron.latest_due)
_next_tick = functools.lru_cache(maxsize=4096)(cron.next_tick)


@dataclass(frozen=True)
class Decision:
    """What to do with a due schedule: fire `tick` or not, and why (for logs and tests)."""

    tick: datetime
    fire: bool
    reason: str
    missed: int


def decide(row: dict[str, Any], now: datetime, settings: Settings) -> Decision:
    """Pure policy: which tick is due and whether the missed-run policy and deadline let it fire."""
    tick, missed = _latest_due(row["cron"], row["time_zone"], row["next_run"], now)
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


FIRE_BATCH = 100  # due schedules locked and fired per transaction


def _fire_pass(conn: Conn, settings: Settings, now: datetime | None, limit: int) -> _Pass:
    """Due schedules are locked FIRE_BATCH at a time and fired in one transaction, with one statement each
    for their runs, their advance and their history (`_fire_many`). Should that fail, the batch is fired
    again one schedule at a time, each in its own savepoint, so a broken schedule rolls back alone (and is
    retried on the next pass). A crash before the commit fires none of the batch; the unique (schedule,
    tick) index and the compare-and-set of next_run keep every tick to one run whatever races."""
    result = _Pass()
    done: list[str] = []
    while len(done) < limit:
        fired: list[int] = []
        failed: list[str] = []
        with conn.transaction():
            at = now if now is not None else db.now(conn)
            rows = conn.execute(queries.get("schedule_lock_due"), {
                "now": at, "done": done, "limit": min(FIRE_BATCH, limit - len(done))}).fetchall()
            if not rows:
                break
            done.extend(row["name"] for row in rows)
            # Replace cancels earlier runs: rare, one at a time. The rest share a few statements.
            alone = [row for row in rows if row["concurrency_policy"] == "Replace"]
            together = [row for row in rows if row["concurrency_policy"] != "Replace"]
            if together:
                try:
                    with conn.transaction():  # a savepoint: on failure, fire these one by one instead
                        fired.extend(_fire_many(conn, together, at, settings))
                except db.CONNECTION_ERRORS:
                    raise  # the connection is gone: the caller reconnects, the batch is rolled back
                except Exception:
                    log.exception("firing %d schedules together failed; firing them one by one", len(together))
                    alone = rows
            for row in alone:
                try:
                    with conn.transaction():  # a savepoint per schedule
                        fired.extend(_fire(conn, row, at, settings))
                except db.CONNECTION_ERRORS:
                    raise
                except Exception:
                    # One broken schedule must not stop the others; it is retried on the next pass.
                    log.exception("schedule %s: firing failed, rolled back", row["name"])
                    failed.append(row["name"])
        result.created.extend(fired)  # committed
        result.failed.extend(failed)
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



def _fire_many(conn: Conn, rows: list[dict[str, Any]], now: datetime, settings: Settings) -> list[int]:
    """Fire a batch of locked due schedules (Allow or Forbid) with one statement each for the live runs
    Forbid looks at, the runs, the advance of next_run and the history pruning. Same decisions as
    `_fire`; a tick that already has a run (or a live run holding the dedup key) inserts nothing."""
    forbid = [row["name"] for row in rows if row["concurrency_policy"] == "Forbid"]
    live: dict[str, int] = {}
    if forbid:
        live = {r["schedule_name"]: r["id"] for r in conn.execute(
            queries.get("schedule_live_runs_many"), {"names": forbid})}
    decided: list[tuple[dict[str, Any], Decision, str]] = []
    runs: list[dict[str, Any]] = []
    for row in rows:
        decision = decide(row, now, settings)
        fire, reason = decision.fire, decision.reason
        if fire and row["name"] in live:
            fire, reason = False, f"skipped (Forbid): run {live[row['name']]} is still queued or running"
        if fire:
            try:
                runs.append(queue.row_params(  # the checks and defaults of queue.enqueue
                    row["actor"], row["args"], queue=row["queue"], eta=None, priority=row["priority"],
                    max_retries=row["max_retries"], time_limit=row["time_limit"],
                    retry_backoff=row["retry_backoff"], schedule_name=row["name"], schedule_tick=decision.tick,
                    object_ref=None, dedup_key=schedules.dedup_key(row["name"]) if row["deduplicate"] else None,
                    validate=False, settings=settings))
            except InvalidInput as exc:  # e.g. args over a limit lowered since apply: skip, do not spin
                reason = f"not enqueued: {exc}"
                log.error("schedule %s: %s", row["name"], reason)
        decided.append((row, decision, reason))
    created: dict[str, int] = {}
    if runs:
        created = {r["schedule_name"]: r["id"] for r in conn.execute(queries.get("schedule_runs_insert_many"), {
            key: [run[column] for run in runs] for key, column in (
                ("queues", "queue"), ("actors", "actor"), ("args", "args"), ("priorities", "priority"),
                ("max_retries", "max_retries"), ("time_limits", "time_limit"), ("retry_backoffs", "retry_backoff"),
                ("names", "schedule_name"), ("ticks", "schedule_tick"), ("dedup_keys", "dedup_key"))})}
    following = [_next_tick(row["cron"], row["time_zone"], now) for row, _, _ in decided]  # none in (tick, now]
    advanced = conn.execute(queries.get("schedule_advance_many"), {
        "names": [row["name"] for row, _, _ in decided], "expected": [row["next_run"] for row, _, _ in decided],
        "next_runs": following, "last_runs": [now if row["name"] in created else None for row, _, _ in decided],
    }).fetchall()
    if len(advanced) != len(decided):  # the rows are locked by us, so only a bug gets here; roll back the batch
        raise RuntimeError("schedules' next_run changed under the scheduler's lock")
    conn.execute(queries.get("schedule_prune_history_many"), {
        "names": [row["name"] for row, _, _ in decided],
        "keep_successful": [row["successful_runs_history_limit"] for row, _, _ in decided],
        "keep_failed": [row["failed_runs_history_limit"] for row, _, _ in decided]})
    for (row, decision, reason), nxt in zip(decided, following, strict=True):
        name = row["name"]
        if name in created:
            reason += f", task {created[name]}"
        elif decision.fire and not reason.startswith(("skipped", "not enqueued")):
            reason = "skipped: the tick already has a run, or a live run holds the dedup key"
        log.info("schedule %s tick %s: %s; next run %s", name, decision.tick.isoformat(), reason,
                 nxt.isoformat() if nxt else "never")
    return list(created.values())


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
