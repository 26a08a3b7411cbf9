"""Runs claimed tasks, sync actors on a fixed set of threads and async actors on the worker's event loop,
and enforces their time limits.

An async actor's attempt is an asyncio task: no thread hand-off, and up to `threads` of them run at once
besides the threads. Its time limit and a cancel record the outcome at once and cancel the asyncio task.
An async actor must not block: it shares the loop with the worker's own claims and health checks.

Threads cannot be killed, so a task past its deadline is stopped in three steps: its outcome is
recorded as TimedOut at once (the task is failed on time whatever the thread does); the thread gets an
asynchronous `TimeLimitExceeded` (stops pure-Python code at the next bytecode) and its cancellable
`time.sleep` wakes up; and a thread still stuck in a C call after a grace period is abandoned and
replaced, so the worker keeps its concurrency. Too many abandoned threads and the process asks to be
restarted.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import inspect
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import context, policies, registry, tracing
from .context import Interrupted, TaskContext, TimeLimitExceeded
from .errors import InvalidInput

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

# Longest run of async attempts a lane executes before it lets the loop turn (attempts that never suspend).
LANE_TURN_SECONDS = 0.002

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def _raise_in(thread_id: int, exc_type: type[BaseException]) -> None:
    _set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


def _clear_in(thread_id: int) -> None:
    _set_async_exc(ctypes.c_ulong(thread_id), ctypes.c_void_p(None))  # NULL clears a pending exception


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: let the call itself decide
        return None


# Argument shapes (positional count, keyword names) already checked against each actor's function:
# binding depends on the shape only, so a queue of similar tasks is checked once, not once per task.
_fitting: set[tuple[Callable[..., Any], int, frozenset[str]]] = set()
_FITTING_MAX = 4096


def _check_arguments(actor: registry.Actor, args: Any, kwargs: dict[str, Any]) -> None:
    """Arguments that do not fit the actor's signature fail the task at once instead of being retried."""
    shape = (actor.fn, len(args), frozenset(kwargs))
    if shape in _fitting:
        return
    signature = _signature(actor.fn)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidInput("args", f"do not fit {actor.name}{signature}: {exc}",
                           "enqueue it with arguments its function accepts") from None
    if len(_fitting) >= _FITTING_MAX:
        _fitting.clear()
    _fitting.add(shape)


def _callable(job: Job) -> tuple[Callable[..., Any], Any, dict[str, Any]]:
    """The actor's function and the attempt's arguments, checked; raises the stop reason of an attempt told to
    stop before it started, and InvalidInput for an unknown actor or arguments that do not fit."""
    if job.ctx.stopped:
        raise job.ctx.stop_reason()
    actor = registry.get(job.actor)
    args, kwargs = ((), job.args) if isinstance(job.args, dict) else (job.args, {})
    _check_arguments(actor, args, kwargs)
    return actor.fn, args, kwargs


@dataclass
class Job:
    task_id: int
    actor: str
    args: Any
    attempt: int
    max_retries: int
    time_limit: float
    started_at: datetime
    retry_backoff: float | None = None  # the task's own first retry delay, if it has one
    trace: str | None = None  # '<queue> <traceparent>' of a task enqueued with tracing on (spans.split_trace)
    ctx: TaskContext = field(init=False)
    done: bool = False  # an outcome was handed over; later ones are dropped
    deadline: float | None = None  # monotonic time the time limit ends, set when execution starts
    thread: TaskThread | None = None
    running: Lane | None = None  # the lane running the attempt of an async actor, once started

    def __post_init__(self) -> None:
        self.ctx = TaskContext(self.task_id, self.actor, self.attempt, self.max_retries, self.time_limit)


OutcomeSink = Callable[[Job, policies.Outcome], None]
Execute = Callable[["TaskThread", Job], None]
ExecuteAsync = Callable[[Job], Coroutine[Any, Any, None]]


class Lane:
    """Where attempts of async actors run one after another: an asyncio task, and the attempt it is in."""

    __slots__ = ("current", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: Job | None = None


class TaskThread(threading.Thread):
    def __init__(self, pool: Executor, index: int) -> None:
        super().__init__(name=f"kubetasks-task-{index}", daemon=True)
        self.pool = pool
        self.current: Job | None = None
        self.retired = False  # abandoned while stuck: exit after the stuck call returns
        self.injected = False  # an interrupt was injected since the last clear (guarded by the pool's lock)

    def run(self) -> None:
        pool = self.pool
        while not self.retired:
            try:
                job = pool.jobs.get()
                if job is None:
                    return
                pool.execute(self, job)
            except Interrupted:
                continue  # a late interrupt that arrived after its task was done: nothing to stop


class Executor:
    def __init__(self, threads: int, sink: OutcomeSink, *, backoff_base: float, backoff_max: float,
                 abandon_grace: float = 2.0, abandoned_limit: int = 8, settings: Settings | None = None) -> None:
        self.size = threads
        self.settings = settings  # handed to each task's context
        self.sink = sink
        self.execute: Execute = self._execute
        self.execute_async: ExecuteAsync = self._execute_async
        traced = tracing.get(settings) if settings is not None else None
        if traced is not None:  # wrapped once here, so an untraced worker pays nothing per attempt
            self.execute = traced.around(self._execute)
            self.execute_async = traced.around_async(self._execute_async)
            self.sink = traced.ending(sink)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.abandon_grace = abandon_grace
        self.abandoned_limit = abandoned_limit
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.inflight: dict[int, Job] = {}
        self.threads: list[TaskThread] = []
        self.abandoned: set[TaskThread] = set()
        self.rng = random.Random()
        self._count = 0
        self.watchdog = Watchdog(self)
        self.mean_duration: float | None = None  # moving average of execution time, seconds
        self.loop: asyncio.AbstractEventLoop | None = None  # where async actors run; None: on a thread instead
        self.async_waiting: collections.deque[Job] = collections.deque()
        self.lanes: set[Lane] = set()

    @property
    def needs_restart(self) -> bool:
        return len(self.abandoned) >= self.abandoned_limit

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the threads; async actors run on `loop` (submit() is then called on that loop's thread)."""
        self.loop = loop
        context.install()
        for _ in range(self.size):
            self._spawn()
        self.watchdog.start()

    def _spawn(self) -> None:
        self._count += 1
        thread = TaskThread(self, self._count)
        self.threads.append(thread)
        thread.start()

    def submit(self, job: Job) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> None:
        """Hand over a claimed batch: one lock for all, then each to the loop (async actors) or the threads."""
        settings = self.settings
        with self.lock:
            for job in jobs:
                job.ctx.settings = settings
                self.inflight[job.task_id] = job
        on_loop = False
        for job in jobs:
            actor = registry.find(job.actor)
            if self.loop is not None and actor is not None and actor.is_async:
                self.async_waiting.append(job)
                on_loop = True
            else:
                self.jobs.put(job)
        if on_loop:
            self._start_async()

    def _start_async(self) -> None:
        """Lanes (asyncio tasks, at most `size`) take the waiting attempts one after another: an attempt that
        does not suspend costs no task of its own."""
        assert self.loop is not None
        while self.async_waiting and len(self.lanes) < self.size:
            lane = Lane()
            self.lanes.add(lane)
            lane.task = self.loop.create_task(self._run_lane(lane))

    async def _run_lane(self, lane: Lane) -> None:
        try:
            turn_ends = time.monotonic() + LANE_TURN_SECONDS
            while self.async_waiting:
                job = self.async_waiting.popleft()
                lane.current = job
                job.running = lane
                try:
                    await self.execute_async(job)
                finally:
                    lane.current = None
                if time.monotonic() >= turn_ends:
                    # Attempts that never suspend would keep the loop for the whole batch: the next claim, the
                    # writes, notifications and health checks would wait for it, instead of overlapping it.
                    await asyncio.sleep(0)
                    turn_ends = time.monotonic() + LANE_TURN_SECONDS
        finally:
            self.lanes.discard(lane)
            if self.async_waiting:  # this lane was cancelled outside an attempt (shutdown): others carry on
                self._start_async()

    def _cancel_async(self, job: Job) -> None:
        """On the loop: cancel the lane while it is still inside this attempt (it may have moved on since)."""
        lane = job.running
        if lane is not None and lane.current is job and lane.task is not None:
            lane.task.cancel()

    async def _execute_async(self, job: Job) -> None:
        with self.lock:
            if job.done:  # finalised (cancelled, timed out) before it started
                return
            job.deadline = time.monotonic() + job.time_limit  # the watchdog enforces it
        context.bind(job.ctx)  # the lane's own context: no other lane sees it
        began = time.monotonic()
        returned: Any = None
        raised: BaseException | None = None
        try:
            fn, args, kwargs = _callable(job)
            returned = await fn(*args, **kwargs)
        except InvalidInput as exc:
            raised = context.TaskError(str(exc))
        except asyncio.CancelledError:
            # Ours (time limit, cancel, shutdown: the outcome is recorded already) or the task's own doing.
            raised = job.ctx.stop_reason() if job.ctx.stopped else RuntimeError("the task was cancelled")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the lane goes on with the next attempt
        except BaseException as exc:
            raised = exc
        finally:
            context.bind(None)
        self._conclude(job, time.monotonic() - began, returned, raised)

    def _execute(self, thread: TaskThread, job: Job) -> None:
        with self.lock:
            if job.done:  # finalised (cancelled, timed out) before it started
                return
            job.thread = thread
            # The time limit counts from the start of execution, not from the claim (prefetched tasks wait).
            job.deadline = time.monotonic() + job.time_limit
            thread.current = job
        context.bind(job.ctx)
        began = time.monotonic()
        returned: Any = None
        raised: BaseException | None = None
        try:
            fn, args, kwargs = _callable(job)
            returned = fn(*args, **kwargs)
            if inspect.iscoroutine(returned):  # an async actor without a loop to run on (no consumer)
                returned = asyncio.run(returned)
        except InvalidInput as exc:  # unknown actor or wrong arguments: every retry would fail the same way
            raised = context.TaskError(str(exc))
        except BaseException as exc:
            raised = exc
        finally:
            context.bind(None)
            self._detach(thread)
        self._conclude(job, time.monotonic() - began, returned, raised)
        with self.lock:
            if thread in self.abandoned:
                self.abandoned.discard(thread)
                thread.retired = True

    def _conclude(self, job: Job, took: float, returned: Any, raised: BaseException | None) -> None:
        """An attempt's outcome from what it returned or raised, handed to the sink."""
        mean = self.mean_duration
        self.mean_duration = took if mean is None else mean + 0.05 * (took - mean)
        if raised is not None and isinstance(raised, KeyboardInterrupt | SystemExit):
            raised = RuntimeError(f"task raised {type(raised).__name__}")
        outcome = policies.decide(job.ctx, returned=returned, raised=raised, now=datetime.now(UTC),
                                  backoff_base=job.retry_backoff or self.backoff_base, backoff_max=self.backoff_max,
                                  started_at=job.started_at, rng=self.rng)
        self._finish(job, outcome)

    def _detach(self, thread: TaskThread) -> None:
        # An interrupt injected a moment too late must not hit the next task: clear it under the lock
        # that interrupt() injects under, and start over if it lands while we do.
        # Only a thread that was injected into needs the (ctypes) clear: no other can hold one, since
        # injections happen under that lock and only while `current` is set.
        while True:
            try:
                with self.lock:
                    thread.current = None
                    if thread.injected:
                        thread.injected = False
                        _clear_in(thread.ident or 0)
                return
            except Interrupted:
                continue

    def _finish(self, job: Job, outcome: policies.Outcome) -> bool:
        with self.lock:
            if job.done:
                return False
            job.done = True
            self.inflight.pop(job.task_id, None)
        self.sink(job, outcome)
        return True

    def interrupt(self, task_id: int, reason: type[Interrupted]) -> Job | None:
        """Stop a task now (time limit or cancel): record its outcome and interrupt its thread."""
        with self.lock:
            job = self.inflight.get(task_id)
            if job is None or job.done:
                return None
            job.ctx.interrupt(reason)
            thread = job.thread if job.thread is not None and job.thread.current is job else None
            if thread is not None and thread.ident is not None:
                thread.injected = True
                _raise_in(thread.ident, reason)
            if job.running is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(self._cancel_async, job)
        outcome = policies.decide(job.ctx, raised=reason(), now=datetime.now(UTC),
                                  backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                                  started_at=job.started_at)
        self._finish(job, outcome)
        return job

    def check_stuck(self, job: Job) -> None:
        """After the grace period: a thread still inside the interrupted task is abandoned and replaced."""
        with self.lock:
            thread = job.thread
            if thread is None or thread.current is not job or thread in self.abandoned:
                return
            self.abandoned.add(thread)
            self.threads.remove(thread)
        log.warning("task %s ignores its interrupt (blocked in a C call?); abandoning thread %s",
                    job.task_id, thread.name)
        self._spawn()

    def expire(self, job: Job) -> None:
        if self.interrupt(job.task_id, TimeLimitExceeded) is not None:
            log.warning("task %s (%s) exceeded its time limit of %gs", job.task_id, job.actor, job.time_limit)

    def stop(self, timeout: float = 5.0) -> None:
        self.watchdog.stop()
        for _ in self.threads:
            self.jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))


class Watchdog(threading.Thread):
    """Enforces time limits: every `tick` it looks at the (at most `threads`) attempts executing now, so its
    cost and memory stay bounded however many tasks pass through."""

    def __init__(self, executor: Executor, tick: float = 0.05) -> None:
        super().__init__(name="kubetasks-watchdog", daemon=True)
        self.executor = executor
        self.tick = tick
        self.stopping = threading.Event()
        self.stuck_checks: list[tuple[float, Job]] = []

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        pool = self.executor
        while not self.stopping.wait(self.tick):
            now = time.monotonic()
            for thread in list(pool.threads):
                job = thread.current
                if job is not None and not job.done and job.deadline is not None and now >= job.deadline:
                    pool.expire(job)
                    self.stuck_checks.append((now + pool.abandon_grace, job))
            for lane in list(pool.lanes):  # an async attempt past its limit: its lane is cancelled
                job = lane.current
                if job is not None and not job.done and job.deadline is not None and now >= job.deadline:
                    pool.expire(job)
            due = [job for at, job in self.stuck_checks if at <= now]
            self.stuck_checks = [(at, job) for at, job in self.stuck_checks if at > now]
            for job in due:
                pool.check_stuck(job)
