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
import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from . import cron, db, manifests, notifyrules, overlap, queries, queue, schedules
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
    """What to do with a due schedule: which ticks to start runs for (oldest first), and why (for logs and
    tests). `tick` is the latest due tick, `missed` how many due ticks came before it."""

    tick: datetime
    ticks: tuple[datetime, ...]
    reason: str
    missed: int

    @property
    def fire(self) -> bool:
        return bool(self.ticks)


def decide(row: dict[str, Any], now: datetime, settings: Settings) -> Decision:
    """Pure policy: which ticks are due and which of them the missed-run policy and deadline let fire."""
    start, end = schedules.tick_bounds(row)
    tick, missed = _latest_due(row["cron"], row["time_zone"], row["next_run"], now, start, end)
    late = (now - tick).total_seconds()
    deadline: int | None = row["starting_deadline_seconds"]
    if row["missed_run_policy"] == "CatchUp":
        window = timedelta(seconds=row["catchup_window"] or 0)
        ticks = _latest_ticks(row["cron"], row["time_zone"], max(row["next_run"], now - window), now,
                              row["catchup_max_runs"] or 1, start, end)
        if not ticks:
            return Decision(tick, (), f"missed (CatchUp): no tick within catchupWindow {window}", missed)
        dropped = missed + 1 - len(ticks)
        return Decision(tick, ticks, f"due, {len(ticks)} tick(s) (CatchUp)"
                        + (f", {dropped} older tick(s) dropped" if dropped else ""), missed)
    if row["missed_run_policy"] == "Skip":
        tolerance = deadline if deadline is not None else skip_tolerance(settings).total_seconds()
        if late > tolerance:
            return Decision(tick, (), f"missed (Skip): {late:.0f}s late, tolerance {tolerance:.0f}s", missed)
        return Decision(tick, (tick,), "due" if not missed else f"due, {missed} earlier tick(s) skipped", missed)
    if deadline is not None and late > deadline:
        return Decision(tick, (), f"missed: {late:.0f}s late, startingDeadlineSeconds {deadline}", missed)
    return Decision(tick, (tick,), "due" if not missed else f"due, once for {missed + 1} ticks (RunOnce)", missed)


def _latest_ticks(expression: str, time_zone: str, first: datetime, last: datetime, limit: int,
                  start: datetime | None, end: datetime | None) -> tuple[datetime, ...]:
    """The newest `limit` ticks in [first, last], oldest first (walked back from `last`)."""
    found: list[datetime] = []
    at = last
    while len(found) < limit:
        tick = cron.prev_tick(expression, time_zone, at, start, end)
        if tick is None or tick < first:
            break
        found.append(tick)
        at = tick - timedelta(microseconds=1)
    return tuple(reversed(found))


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
            alone: list[dict[str, Any]] = []
            try:
                with conn.transaction():  # a savepoint: on failure, fire these one by one instead
                    fired.extend(_fire_many(conn, rows, at, settings))
            except db.CONNECTION_ERRORS:
                raise  # the connection is gone: the caller reconnects, the batch is rolled back
            except Exception:
                log.exception("firing %d schedules together failed; firing them one by one", len(rows))
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
    release_cancelled_others(conn)
    return result


def release_cancelled_others(conn: Conn) -> list[int]:
    """Start the runs CancelOther holds back whose cancelled predecessors' attempts have stopped (the
    outcome trigger releases them itself when nothing was executing); also any other buffered run with
    nothing live before it (its live run was deleted, say), which no outcome would release."""
    with conn.transaction():
        return [row["id"] for row in conn.execute(queries.get("schedule_release_after_cancel"))]


def _fire(conn: Conn, row: dict[str, Any], now: datetime, settings: Settings) -> list[int]:
    """One schedule on its own (the fallback when its batch failed)."""
    return _fire_rows(conn, [row], now, settings)


def _fire_many(conn: Conn, rows: list[dict[str, Any]], now: datetime, settings: Settings) -> list[int]:
    """Fire a batch of locked due schedules with one statement each for the live runs the overlap policies
    look at, the runs, the advance of next_run and the history pruning (Replace and CancelOther cancel
    their live runs one by one: rare). A tick that already has a run (or a live run holding the dedup key)
    inserts nothing."""
    return _fire_rows(conn, rows, now, settings)


def _fire_rows(conn: Conn, rows: list[dict[str, Any]], now: datetime, settings: Settings) -> list[int]:
    decided = [(row, decide(row, now, settings)) for row in rows]
    started = start_runs(conn, [(row, list(decision.ticks)) for row, decision in decided], now, settings)
    _record_missed(conn, [(row, decision, started[row["name"]]) for row, decision in decided], now)
    following = [_next_tick(row["cron"], row["time_zone"], now, *schedules.tick_bounds(row))
                 for row, _ in decided]  # none in (tick, now]
    advanced = conn.execute(queries.get("schedule_advance_many"), {
        "names": [row["name"] for row, _ in decided], "expected": [row["next_run"] for row, _ in decided],
        "next_runs": following,
        "last_runs": [now if started[row["name"]].created or started[row["name"]].buffered else None
                      for row, _ in decided],
    }).fetchall()
    if len(advanced) != len(decided):  # the rows are locked by us, so only a bug gets here; roll back the batch
        raise RuntimeError("schedules' next_run changed under the scheduler's lock")
    conn.execute(queries.get("schedule_prune_history_many"), {
        "names": [row["name"] for row, _ in decided],
        "keep_successful": [row["successful_runs_history_limit"] for row, _ in decided],
        "keep_failed": [row["failed_runs_history_limit"] for row, _ in decided]})
    for (row, decision), nxt in zip(decided, following, strict=True):
        log.info("schedule %s tick %s: %s%s; next run %s", row["name"], decision.tick.isoformat(), decision.reason,
                 started[row["name"]].summary(), nxt.isoformat() if nxt else "never")
    return [task_id for one in started.values() for task_id in one.created]


@dataclass
class Started:
    """What became of the ticks of one schedule: runs created, runs buffered, ticks skipped (with why)."""

    created: list[int] = field(default_factory=list)
    buffered: list[int] = field(default_factory=list)
    skipped: list[tuple[datetime, str]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    missed: list[datetime] = field(default_factory=list)  # skipped ticks no run covers (Forbid, BufferOne)

    def summary(self) -> str:
        parts = [f"task {', '.join(map(str, self.created))}" if self.created else "",
                 f"buffered {', '.join(map(str, self.buffered))}" if self.buffered else "",
                 f"cancelled {', '.join(map(str, self.cancelled))}" if self.cancelled else "",
                 "; ".join(f"{tick.isoformat()} {why}" for tick, why in self.skipped)]
        return "".join(", " + p for p in parts if p)


def missed_ticks(row: dict[str, Any], decision: Decision, started: Started,
                 now: datetime) -> list[tuple[datetime, str]]:
    """The due ticks that got no run and no covering one: skipped by Forbid or BufferOne, or lost to downtime
    (not among the ticks the missed-run policy fired; ticks outside startTime / endTime are not ticks at all).
    At most cron.WALK_LIMIT lost ticks are walked, the oldest."""
    found = [(tick, why) for tick, why in started.skipped if tick in started.missed]
    if decision.missed or not decision.fire:
        fired = set(decision.ticks)
        due = cron.ticks_between(row["cron"], row["time_zone"], row["next_run"], now, *schedules.tick_bounds(row))
        found += [(tick, f"lost to downtime: {decision.reason}") for tick in due if tick not in fired]
    return sorted(found)


def _record_missed(conn: Conn, fired: list[tuple[dict[str, Any], Decision, Started]], now: datetime) -> None:
    """One outbox event per missed tick and rule asking for scheduleMissed, in the firing transaction."""
    names: list[str] = []
    indexes: list[int] = []
    rules: list[str] = []
    payloads: list[str] = []
    for row, decision, started in fired:
        wanted = notifyrules.wanting(row.get("notify"), notifyrules.SCHEDULE_MISSED)
        if not wanted:
            continue
        for tick, why in missed_ticks(row, decision, started, now):
            payload = json.dumps({"schedule": row["name"], "actor": row["actor"], "queue": row["queue"],
                                  "tick": tick.astimezone(UTC).isoformat().replace("+00:00", "Z"), "why": why,
                                  "missedRunPolicy": row["missed_run_policy"],
                                  "concurrencyPolicy": row["concurrency_policy"]})
            for index, rule in wanted:
                names.append(row["name"])
                indexes.append(index)
                rules.append(json.dumps(rule))
                payloads.append(payload)
    if names:
        conn.execute(queries.get("notification_insert_missed"), {
            "names": names, "rule_indexes": indexes, "rules": rules, "payloads": payloads})


BUFFERED_ETA = datetime(9999, 12, 31, tzinfo=UTC)  # never due: a buffered run waits for its release


def start_runs(conn: Conn, wanted: list[tuple[dict[str, Any], list[datetime]]], now: datetime,
               settings: Settings) -> dict[str, Started]:
    """Start runs for the ticks of locked schedules (oldest first each), as their overlap policies say, in
    one INSERT; return what became of each schedule's ticks. The firing pass and backfill both use it."""
    out = {row["name"]: Started() for row, _ in wanted}
    watched = [row["name"] for row, ticks in wanted if ticks and row["concurrency_policy"] != "Allow"]
    counts: dict[str, dict[str, Any]] = {}
    if watched:
        counts = {r["schedule_name"]: r for r in conn.execute(
            queries.get("schedule_run_counts_many"), {"names": watched})}
    runs: list[dict[str, Any]] = []
    for row, ticks in wanted:
        name = row["name"]
        found = counts.get(name) or {}
        planned = overlap.plan(row["concurrency_policy"], ticks, int(found.get("live") or 0),
                               int(found.get("buffered") or 0))
        out[name].skipped.extend(planned.skip)
        out[name].missed.extend(planned.missed)
        if planned.cancel_live:
            for live in conn.execute(queries.get("schedule_live_runs"), {"name": name}).fetchall():
                message = f"replaced ({row['concurrency_policy']}) by the run of {name} due {ticks[-1].isoformat()}"
                if queue.cancel_task(conn, live["id"], message) is not None:
                    out[name].cancelled.append(live["id"])
        for tick, held in [(t, False) for t in planned.run] + [(t, True) for t in planned.buffer]:
            try:
                runs.append(_run_params(row, tick, held, settings))
            except InvalidInput as exc:  # e.g. args over a limit lowered since apply: skip, do not spin
                out[name].skipped.append((tick, f"not enqueued: {exc}"))
                log.error("schedule %s: not enqueued: %s", name, exc)
    if runs:
        inserted: set[tuple[str, datetime]] = set()
        for r in conn.execute(queries.get("schedule_runs_insert_many"), {
                key: [run[column] for run in runs] for key, column in (
                    ("queues", "queue"), ("actors", "actor"), ("args", "args"), ("priorities", "priority"),
                    ("max_retries", "max_retries"), ("time_limits", "time_limit"),
                    ("retry_backoffs", "retry_backoff"), ("names", "schedule_name"), ("ticks", "schedule_tick"),
                    ("dedup_keys", "dedup_key"), ("etas", "eta"), ("reasons", "reason"),
                    ("notifies", "notify"))}):
            started = out[r["schedule_name"]]
            (started.buffered if r["reason"] == overlap.BUFFERED_REASON else started.created).append(r["id"])
            inserted.add((r["schedule_name"], r["schedule_tick"]))
        for run in runs:
            if (run["schedule_name"], run["schedule_tick"]) not in inserted:
                out[run["schedule_name"]].skipped.append((run["schedule_tick"], (
                    "skipped: the tick already has a run, or a live run holds the dedup key")))
    return out


def _run_params(row: dict[str, Any], tick: datetime, held: bool, settings: Settings) -> dict[str, Any]:
    """One run's row: the checks and defaults of queue.enqueue, the schedule's rules, jitter or the buffer."""
    params = queue.row_params(
        row["actor"], row["args"], queue=row["queue"], eta=None, priority=row["priority"],
        max_retries=row["max_retries"], time_limit=row["time_limit"], retry_backoff=row["retry_backoff"],
        schedule_name=row["name"], schedule_tick=tick,
        object_ref=None, dedup_key=schedules.dedup_key(row["name"]) if row["deduplicate"] else None,
        validate=False, settings=settings)
    rules = queue.task_rules(row["actor"], row.get("notify"))
    params["notify"] = json.dumps(rules) if rules is not None else None
    params["reason"] = overlap.BUFFERED_REASON if held else "Queued"
    delay = cron.jitter_delay(row["name"], tick, row.get("jitter"))
    params["eta"] = BUFFERED_ETA if held else (tick + delay if delay else None)
    return params


BACKFILL_LIMIT = 1000  # ticks one backfill may start; a longer range is refused (backfill it in parts)


@dataclass(frozen=True)
class Backfill:
    """A backfill's outcome: the ticks in the range, those that already had a run, and what became of the rest."""

    ticks: list[datetime]
    existing: list[datetime]
    started: Started


def parse_range(value: str, field: str = "kubetasks.dev/backfill") -> tuple[datetime, datetime]:
    """'<from>/<to>' (two RFC 3339 times, an ISO 8601 interval) as the backfill annotation writes it."""
    first, sep, last = value.strip().partition("/")
    if not sep:
        raise InvalidInput(field, f"{value!r} is not '<from>/<to>'",
                           "write two RFC 3339 times joined by '/', e.g. 2026-01-01T00:00:00Z/2026-01-02T00:00:00Z")
    return parse_time(first, field), parse_time(last, field)


def parse_time(value: str, field: str) -> datetime:
    """An RFC 3339 time with an offset; InvalidInput naming `field` otherwise."""
    try:
        return manifests.parse_time(value)
    except ValueError as exc:
        raise InvalidInput(field, str(exc), manifests.TIME_FIX) from None


def backfill(conn: Conn, name: str, first: datetime, last: datetime, settings: Settings,
             now: datetime | None = None) -> Backfill:
    """Start one run for each tick in [first, last] that has none yet, through the overlap policy, as if the
    ticks came one after the other now. The schedule's row is locked, so backfills of one schedule (and the
    firing pass) take turns, and the unique (schedule, tick) index keeps every tick to one run regardless."""
    if last < first:
        raise InvalidInput("to", f"{last.isoformat()} is before from {first.isoformat()}", "swap --from and --to")
    with conn.transaction():
        at = now if now is not None else db.now(conn)
        if last > at:
            raise InvalidInput("to", f"{last.isoformat()} is in the future",
                               "backfill past ticks only; the scheduler fires the coming ones")
        row = conn.execute(queries.get("schedule_lock"), {"name": name}).fetchone()
        if row is None:
            raise schedules.ScheduleNotFound(name)
        ticks = cron.ticks_between(row["cron"], row["time_zone"], first, last, *schedules.tick_bounds(row),
                                   limit=BACKFILL_LIMIT + 1)
        if len(ticks) > BACKFILL_LIMIT:
            raise InvalidInput("to", f"the range holds more than {BACKFILL_LIMIT} ticks",
                               "backfill a shorter range, one part after the other")
        existing = {r["schedule_tick"] for r in conn.execute(
            queries.get("schedule_ticks_taken"), {"name": name, "ticks": ticks})}
        fresh = [tick for tick in ticks if tick not in existing]
        started = start_runs(conn, [(row, fresh)], at, settings)[name]
        if started.created or started.buffered:
            conn.execute(queries.get("schedule_mark_run"), {"name": name, "now": at})
    log.info("schedule %s: backfill of %s to %s, %d tick(s), %d had runs%s", name, first.isoformat(),
             last.isoformat(), len(ticks), len(existing), started.summary())
    return Backfill(ticks=ticks, existing=sorted(existing), started=started)


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
