"""kubetasks actors for the bench suite, loaded by `kubetasks worker --module bench.tasks_kubetasks`."""

from __future__ import annotations

from bench.peers._common import FailOnce, record, should_fail
from kubetasks.worker import context
from kubetasks.worker.registry import actor


@actor(name="bench.noop")
def noop(i: int, f: int = 0) -> None:
    record(i)
    # The claim counts the attempt before the task runs: 1 on the first attempt.
    if should_fail(f, context.current().attempt - 1):
        raise FailOnce(i)


@actor(name="bench.noop_async")
async def noop_async(i: int, f: int = 0) -> None:
    record(i)
    if should_fail(f, context.current().attempt - 1):
        raise FailOnce(i)


@actor(name="bench.sched")
def sched(k: int) -> None:
    record(f"s{k}")
