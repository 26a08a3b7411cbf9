"""The consumer loop of one worker process: LISTEN, claim, hand to threads, record outcomes.

One asyncio loop and three connections: `listen` only waits for notifications; `work` claims batches
(one statement per wake-up, not one per thread) and holds the worker session's advisory lock, one for
all attempts (tasks.session names the session that claimed them); `record` writes outcomes in batches,
alongside the claims rather than between them (the two round trips overlap on two server backends). The
loop scans on start-up, on every notification for its queues, and whenever `consumer_listen_timeout`
passes without one (tasks whose notification was missed, retries now due, future-dated tasks). On a
lost connection it reconnects with backoff, takes back the session's lock if the attempts still running
were not taken over meanwhile (else it starts a new session and drops them), and then writes their
outcomes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from . import controls, db, metrics, policies, protocol, queries
from .context import Cancelled, WorkerShutdown
from .executor import Executor, Job
from .settings import Settings

log = logging.getLogger(__name__)

FLUSH_BATCH = 1000
# Outcomes waiting to be written past which claims stop: writes behind by a few batches (a slow or locked
# table) throttle the claims, rather than fill memory with outcomes.
OUTCOMES_MAX = 3 * FLUSH_BATCH
PREFETCH_SECONDS = 0.05
PREFETCH_MAX_PER_THREAD = 128  # tiny tasks: claims of ~500 rows at 8 threads, each a few ms of server time
AsyncConn = db.AsyncConn


def worker_id() -> str:
    # POD_NAME (the chart sets it from the downward API): pods on the host's network share its hostname.
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}/{os.getpid()}"


class Health:
    """What /healthz and /readyz report: the loop is turning, and the database answers."""

    def __init__(self) -> None:
        self.ready = False
        self.heartbeat = time.monotonic()
        self.reason = "starting"

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self, max_age: float) -> bool:
        return time.monotonic() - self.heartbeat < max_age


class Consumer:
    def __init__(self, settings: Settings, health: Health | None = None, name: str | None = None) -> None:
        self.settings = settings
        self.health = health or Health()
        self.name = name or worker_id()
        worker = settings.worker
        self.queues = list(dict.fromkeys(worker.queues))
        # Claimed ahead of free threads: bigger batches per round trip when tasks are short.
        self.threads = worker.threads
        self.prefetch = worker.prefetch  # None: adapt to how long tasks take
        self.listen_timeout = worker.consumer_listen_timeout.total_seconds()
        self.executor = Executor(worker.threads, self._on_outcome,
                                 backoff_base=worker.retry_backoff_base.total_seconds(),
                                 backoff_max=worker.retry_backoff_max.total_seconds(),
                                 abandoned_limit=worker.abandoned_threads_limit, settings=settings)
        self.outcomes: collections.deque[tuple[Job, policies.Outcome]] = collections.deque()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.outcome_ready = asyncio.Event()
        self._signalled = False
        # A claim put off until enough slots are free: it waits on `slots_freed`, which the task threads set
        # once the attempts in flight are down to `_resume_at` (-1: no claim waiting), and each write sets.
        self.slots_freed = asyncio.Event()
        self._resume_at = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.work: AsyncConn | None = None
        self.session: int | None = None  # the number whose lock `work` holds (tasks.session)
        self.listen: AsyncConn | None = None
        self.record: AsyncConn | None = None
        self._writing = False  # the recorder is in a round trip
        self.backlog = False
        self._durations: dict[str, Any] = {}  # the duration histogram's child per actor
        # Controls of our queues that have any (controls.py), re-read when the database announces a change.
        self.controls: dict[str, controls.QueueControl] = {}
        self.controls_stale = False
        self._limited: set[int] = set()  # tasks claimed from limited queues: their outcomes free a slot

    def capacity(self) -> int:
        """Tasks this process holds at once: its threads plus those claimed ahead of them. Unless set, the
        prefetch covers about PREFETCH_SECONDS of work at the observed task duration: many for tiny tasks
        (bigger batches per round trip), none for long ones (other workers get them instead)."""
        if self.prefetch is not None:
            return self.threads + self.prefetch
        duration = self.executor.mean_duration
        if duration is None:
            return 2 * self.threads
        auto = int(self.threads * PREFETCH_SECONDS / max(duration, 1e-6))
        return self.threads + min(auto, PREFETCH_MAX_PER_THREAD * self.threads)

    # -- called from task threads -------------------------------------------------------------------
    def _on_outcome(self, job: Job, outcome: policies.Outcome) -> None:
        self.outcomes.append((job, outcome))
        if not self._signalled and self._loop is not None:
            self._signalled = True
            self._set(self.outcome_ready)
        if self._resume_at >= 0 and len(self.executor.inflight) <= self._resume_at:
            self._resume_at = -1  # two threads may both get here: setting the event twice does no harm
            self._set(self.slots_freed)

    def _set(self, event: asyncio.Event) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:  # an async actor's, or an interrupt from the loop
            event.set()
        else:
            self._loop.call_soon_threadsafe(event.set)

    # -- lifecycle ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> int:
        """Consume until stop(); returns the process exit code (75: restart me)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.executor.start(self._loop)
        backoff = db.Backoff.for_database(self.settings.database, first=0.1)
        try:
            while not self.stopping.is_set():
                try:
                    await self._connect()
                    backoff.reset()
                    await self._serve()
                except db.CONNECTION_ERRORS as exc:
                    delay = backoff.next()
                    self.health.ready = False
                    self.health.reason = f"database unavailable: {exc}".strip()
                    log.warning("worker %s lost the database (%s); reconnecting in %.1fs",
                                self.name, str(exc).strip() or type(exc).__name__, delay)
                    await self._close()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), delay)
            await self._drain(self.settings.worker.shutdown_timeout.total_seconds())
        finally:
            await self._close()
            self.executor.stop(timeout=1.0)
        return 75 if self.executor.needs_restart else 0

    async def _connect(self) -> None:
        name = f"kubetasks-worker {self.name}"
        self.work = await db.connect_async(self.settings.database, application_name=name)
        self.listen = await db.connect_async(self.settings.database, application_name=name)
        self.record = await db.connect_async(self.settings.database, application_name=name)
        for channel in (protocol.QUEUE_CHANNEL, protocol.CANCEL_CHANNEL, protocol.QUEUE_CONTROL_CHANNEL):
            await self.listen.execute(db.listen(channel))
        self.controls = await controls.load(self.work, self.queues)  # after LISTEN: no change slips between
        await self._start_session()
        self.health.ready = True
        self.health.reason = "ok"
        self.wake.set()  # scan first: tasks may have been enqueued while nobody listened

    async def _close(self) -> None:
        for conn in (self.listen, self.record, self.work):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self.listen = self.record = self.work = None

    async def _start_session(self) -> None:
        """Hold a session lock on `work`: the previous session's when attempts claimed in it are still pending
        (a reconnection) and it can be taken back, else a new one. Pending attempts no longer ours are dropped."""
        assert self.work is not None
        pending = {job.task_id for job, _ in self.outcomes} | set(self.executor.inflight)
        kept: set[int] = set()
        resumed = False
        if pending and self.session is not None:
            row = await (await self.work.execute(queries.get("worker_session_resume"),
                                                 {"session": self.session})).fetchone()
            resumed = row is not None and bool(row["resumed"])
        if resumed:
            rows = await (await self.work.execute(queries.get("attempt_owned"), {
                "ids": sorted(pending), "worker": self.name, "session": self.session})).fetchall()
            kept = {row["id"] for row in rows}
        else:
            self.session = None
            while self.session is None:  # no row only when the sequence wrapped onto a live session
                row = await (await self.work.execute(queries.get("worker_session_start"))).fetchone()
                self.session = None if row is None else int(row["session"])
        lost = pending - kept
        if lost:
            log.warning("attempts %s were taken over while the database was away; their outcomes are dropped",
                        sorted(lost))
            self.outcomes = collections.deque((j, o) for j, o in self.outcomes if j.task_id not in lost)
            for task_id in lost:
                self.executor.interrupt(task_id, Cancelled)
            # interrupt() queued outcomes for them; written under the new session, they match no row (the
            # rescuer retries those once the old session's lock is free), which is what we want.

    # -- the loop -----------------------------------------------------------------------------------
    async def _serve(self) -> None:
        assert self.listen is not None
        helpers = [asyncio.create_task(self._listen(self.listen)), asyncio.create_task(self._recorder())]
        try:
            while not self.stopping.is_set():
                self.health.beat()
                for helper in helpers:
                    if helper.done():
                        helper.result()  # re-raise what ended it
                if self.executor.needs_restart:  # the outcomes are written by _drain, once the recorder is done
                    log.error("%d task threads are stuck past their time limit; restarting this process",
                              len(self.executor.abandoned))
                    self.stopping.set()
                    break
                if self.controls_stale and self.work is not None:
                    self.controls_stale = False
                    self.controls = await controls.load(self.work, self.queues)
                if not self.wake.is_set():
                    await self._wait(helpers, self.wake)
                    continue
                capacity = self.capacity()
                unwritten = max(0, len(self.outcomes) - OUTCOMES_MAX)  # they hold their slots too
                free = capacity - len(self.executor.inflight) - unwritten
                # With a backlog, wait until half the capacity is free: fewer, bigger claims per round trip.
                wanted = max(1, capacity // 2) if self.backlog and self.executor.inflight else 1
                if free >= wanted:
                    self.wake.clear()
                    claimed = await self._claim_all(free)
                    self.backlog = claimed >= free
                    if self.backlog:
                        self.wake.set()  # a full batch: more may be waiting
                    continue
                # Work is waiting but too few slots are free: wait for them (not for the wake-up already set).
                self.slots_freed.clear()
                self._resume_at = capacity - unwritten - wanted  # below 0: only a write can free enough
                if len(self.executor.inflight) > self._resume_at:  # else freed since `free` was counted
                    await self._wait(helpers, self.slots_freed)
                self._resume_at = -1
        finally:
            listener, recorder = helpers
            listener.cancel()
            # A write under way is let finish: cancelling it mid-statement would leave unknown whether it committed.
            while self._writing and not recorder.done():
                await asyncio.wait([recorder], timeout=0.05)
            recorder.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError, *db.CONNECTION_ERRORS):
                    await helper

    async def _recorder(self) -> None:
        """Write outcomes as they come, one batch per round trip, on the `record` connection."""
        while True:
            await self.outcome_ready.wait()
            self._writing = True
            try:
                await self._write_batch()
            finally:
                self._writing = False
            self.wake.set()  # the claim loop looks again
            self.slots_freed.set()  # written outcomes no longer count against OUTCOMES_MAX

    async def _wait(self, helpers: list[asyncio.Task[None]], event: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (event, self.stopping)]
        try:
            done, _ = await asyncio.wait([*waits, *helpers], timeout=self.listen_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if not done:
            self.wake.set()  # nothing announced for a while: scan anyway

    async def _listen(self, conn: AsyncConn) -> None:
        async for note in conn.notifies():
            if note.channel == protocol.QUEUE_CHANNEL:
                wakeup = protocol.decode_wakeup(note.payload)
                if wakeup is not None and wakeup[0] in self.queues:
                    self.wake.set()
            elif note.channel == protocol.CANCEL_CHANNEL:
                task_id = protocol.decode_cancel(note.payload)
                if task_id is not None and self.executor.interrupt(task_id, Cancelled) is not None:
                    log.info("task %s cancelled while running", task_id)
            elif note.channel == protocol.QUEUE_CONTROL_CHANNEL and note.payload in self.queues:
                self.controls_stale = True  # re-read before the next claim
                self.wake.set()

    async def _write_batch(self) -> None:
        """Record the outcomes gathered so far (up to FLUSH_BATCH) in one round trip."""
        assert self.record is not None
        self._signalled = False
        self.outcome_ready.clear()
        batch = [self.outcomes.popleft() for _ in range(min(FLUSH_BATCH, len(self.outcomes)))]
        if not batch:
            return
        try:
            await self._write([outcome for _, outcome in batch])
        except BaseException:
            self.outcomes.extendleft(reversed(batch))  # written after reconnecting
            self.outcome_ready.set()  # with the wake-up this write took: no new outcome may come to give it back
            raise
        self._after_write(batch)
        if self.outcomes:  # more came in meanwhile, or the batch was full
            self.outcome_ready.set()

    async def _claim_all(self, free: int) -> int:
        """Claim up to `free` tasks from our queues in order of preference; returns how many."""
        claimed = 0
        for queue in self.queues:
            if claimed >= free:
                break
            rows = await self._claim(queue, free - claimed)  # committed on return (autocommit)
            self._submit(rows)
            claimed += len(rows)
        return claimed

    async def _claim(self, queue: str, limit: int) -> list[tuple[Any, ...]]:
        """Claimed rows as tuples in the order of Job's fields (no dict per row)."""
        assert self.work is not None
        control = self.controls.get(queue)
        if control is not None and (control.paused or control.limited):
            return await self._claim_limited(control, limit)
        cur = self.work.cursor(row_factory=tuple_row)
        await cur.execute(queries.get("task_claim"), {"queue": queue, "limit": limit, "worker": self.name,
                                                       "session": self.session})
        return await cur.fetchall()

    async def _claim_limited(self, control: controls.QueueControl, limit: int) -> list[tuple[Any, ...]]:
        """Nothing from a paused queue; from a limited one, task_claim_limited under the queue's row lock."""
        assert self.work is not None
        if control.paused:
            return []
        params = {"queue": control.name, "limit": limit, "worker": self.name, "session": self.session,
                  "scan": control.claim_scan(limit)}
        async with self.work.transaction():
            await self.work.execute(queries.get("queue_control_lock"), params)
            cur = self.work.cursor(row_factory=tuple_row)
            await cur.execute(queries.get("task_claim_limited"), params)
            rows = await cur.fetchall()
            held = len(rows) < limit and control.rate_limit is not None and bool(
                await (await self.work.execute(queries.get("queue_has_runnable"), params)).fetchone())
        self._limited.update(row[0] for row in rows)
        if held:  # tasks wait for tokens: look again when the next one is due
            assert control.rate_period is not None and control.rate_limit is not None
            asyncio.get_running_loop().call_later(control.rate_period / control.rate_limit, self.wake.set)
        return rows

    def _submit(self, rows: list[tuple[Any, ...]]) -> None:
        started = collections.Counter(row[1] for row in rows)  # by actor
        self.executor.submit_many([Job(*row) for row in rows])
        for actor, n in started.items():  # the metrics once per actor and batch, not once per task
            metrics.IN_PROGRESS.labels(actor).inc(n)

    def _after_write(self, batch: list[tuple[Job, policies.Outcome]]) -> None:
        """What follows recorded outcomes: wake-ups for our own retries, and the metrics, counted per
        (actor, state) for the whole batch; only the duration histogram takes one value per attempt."""
        if not batch:
            return
        loop = asyncio.get_running_loop()
        at = now()
        ended: collections.Counter[tuple[str, str]] = collections.Counter()
        freed = False
        for job, outcome in batch:
            if self._limited and job.task_id in self._limited:
                self._limited.discard(job.task_id)
                freed = True  # a slot of a limited queue: claim again rather than wait for the next scan
            if outcome.state == "running" and outcome.eta is not None:
                # Our own retry: wake up when it is due rather than at the next scan.
                loop.call_later(max(0.0, (outcome.eta - at).total_seconds()), self.wake.set)
            ended[job.actor, outcome.state] += 1
            if outcome.started_at is not None:
                duration = self._durations.get(job.actor)
                if duration is None:
                    duration = self._durations[job.actor] = metrics.DURATION.labels(job.actor)
                duration.observe(max(0.0, (at - outcome.started_at).total_seconds()))
        if freed:
            self.wake.set()
        for (actor, state), n in ended.items():
            metrics.IN_PROGRESS.labels(actor).dec(n)
            if state == "running":  # a retry
                metrics.RETRIES.labels(actor).inc(n)
            else:
                metrics.FINISHED.labels(actor, state).inc(n)

    async def _flush(self) -> None:
        while self.outcomes:
            await self._write_batch()

    async def _write(self, outcomes: list[policies.Outcome]) -> None:
        """Record outcomes: attempt rows only when they tell something, then the tasks. Plain outcomes (a final
        state and reason, nothing else) go by ids alone, one statement per kind; the rest by task_finish_many.
        A single statement (the usual batch: plain successes) needs no transaction around it."""
        assert self.record is not None
        statements: list[tuple[str, dict[str, Any]]] = []
        recorded = [o for o in outcomes if o.worth_recording]
        if recorded:
            statements.append(("attempt_insert_many", {
                "ids": [o.task_id for o in recorded], "attempts": [o.attempt for o in recorded],
                "states": [o.state for o in recorded], "reasons": [o.reason for o in recorded],
                "worker": [self.name] * len(recorded), "started": [o.started_at for o in recorded],
                "errors": [o.error for o in recorded], "logs": [o.log for o in recorded]}))
        plain: dict[tuple[str, str], list[int]] = {}
        other: list[policies.Outcome] = []
        for o in outcomes:
            if o.result is None and o.error is None and o.eta is None and o.state in protocol.FINAL_STATES:
                plain.setdefault((o.state, o.reason), []).append(o.task_id)
            else:
                other.append(o)
        for (state, reason), ids in plain.items():
            statements.append(("task_finish_plain", {"ids": ids, "state": state, "reason": reason,
                                                     "worker": self.name, "session": self.session}))
        if other:
            statements.append(("task_finish_many", {
                "ids": [o.task_id for o in other], "states": [o.state for o in other],
                "reasons": [o.reason for o in other], "results": [o.result for o in other],
                "errors": [o.error for o in other], "etas": [o.eta for o in other],
                "worker": self.name, "session": self.session}))
        if len(statements) == 1:
            name, params = statements[0]
            await self.record.execute(queries.get(name), params)
            return
        async with self.record.transaction():
            for name, params in statements:
                await self.record.execute(queries.get(name), params)

    async def _drain(self, timeout: float = 25.0) -> None:
        """On shutdown: stop claiming, let attempts in flight finish (within `timeout`), record everything.
        Attempts still running then go back to the queue (WorkerShutdown) instead of waiting for a rescuer."""
        deadline = time.monotonic() + timeout
        while self.executor.inflight and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outcome_ready.wait(), 0.1)
            await self._flush_quietly()
        for task_id in list(self.executor.inflight):
            self.executor.interrupt(task_id, WorkerShutdown)
        await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        if not self.outcomes:
            self._signalled = False
            self.outcome_ready.clear()
            return
        try:
            if self.work is None:
                await self._connect()
            await self._flush()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("could not record %d outcomes at shutdown (%s); the rescuer will retry them",
                        len(self.outcomes), exc)


def now() -> datetime:
    return datetime.now(UTC)
