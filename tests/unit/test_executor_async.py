"""The executor's async path without a database: where async attempts run, and a cancel that must hit only
the attempt it names (a lane moves on to the next attempt right after)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from kubetasks.worker import context, policies, registry
from kubetasks.worker.executor import Executor, Job

ran_on: dict[str, int] = {}


@registry.actor(name="unit.async_where")
async def where(key: str, seconds: float = 0.0) -> str:
    ran_on[key] = threading.get_ident()
    await asyncio.sleep(seconds)
    return key


def job(task_id: int, **args: Any) -> Job:
    return Job(task_id, "unit.async_where", args, 1, 0, 30.0, datetime.now(UTC))


def test_without_a_loop_an_async_actor_runs_to_completion_on_a_task_thread() -> None:
    outcomes: list[policies.Outcome] = []
    done = threading.Event()
    executor = Executor(1, lambda _, o: (outcomes.append(o), done.set()), backoff_base=1, backoff_max=1)
    executor.start()
    try:
        executor.submit(job(1, key="threaded"))
        assert done.wait(10)
    finally:
        executor.stop()
    assert [(o.state, o.result) for o in outcomes] == [("successful", '"threaded"')]
    assert ran_on["threaded"] != threading.get_ident()


def test_a_cancel_stops_its_own_attempt_and_the_lane_runs_the_next_one() -> None:
    async def scenario() -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        outcomes: list[tuple[int, str]] = []
        two = asyncio.Event()

        def sink(j: Job, o: policies.Outcome) -> None:
            outcomes.append((j.task_id, o.state))
            if len(outcomes) == 2:
                loop.call_soon_threadsafe(two.set)

        executor = Executor(1, sink, backoff_base=1, backoff_max=1)  # one lane: the second waits behind the first
        executor.start(loop)
        try:
            executor.submit(job(1, key="slow", seconds=30))
            executor.submit(job(2, key="next", seconds=0.05))
            async def started() -> None:
                while "slow" not in ran_on:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(started(), 10)
            # From another thread, as the watchdog and a cancel notification's handler may.
            await asyncio.to_thread(executor.interrupt, 1, context.Cancelled)
            await asyncio.wait_for(two.wait(), 10)
        finally:
            executor.stop()
        return outcomes

    ran_on.clear()
    outcomes = asyncio.run(scenario())
    assert outcomes == [(1, "cancelled"), (2, "successful")]
    assert ran_on["slow"] == ran_on["next"] == threading.get_ident()  # both on the loop's thread


@registry.actor(name="unit.async_instant")
async def instant() -> None:
    """Never suspends: without the lane's own turns, a batch of these would keep the loop to the end."""


def test_a_lane_of_attempts_that_never_suspend_lets_the_loop_turn_before_the_batch_ends() -> None:
    total = 20_000  # tens of milliseconds of attempts, against turns of LANE_TURN_SECONDS

    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        outcomes: list[int] = []
        finished = asyncio.Event()

        def sink(j: Job, o: policies.Outcome) -> None:
            outcomes.append(j.task_id)
            if len(outcomes) == total:
                finished.set()  # on the loop's thread: async attempts end there

        executor = Executor(1, sink, backoff_base=1, backoff_max=1)
        executor.start(loop)
        try:
            executor.submit_many([Job(i, "unit.async_instant", {}, 1, 0, 30.0, datetime.now(UTC))
                                  for i in range(total)])
            seen: list[int] = []
            loop.call_soon(lambda: seen.append(len(outcomes)))  # the loop's next turn, after the lane's start
            await asyncio.wait_for(finished.wait(), 60)
        finally:
            executor.stop()
        return seen[0], len(outcomes)

    at_first_turn, done = asyncio.run(scenario())
    assert done == total
    assert at_first_turn < total  # the loop ran in the middle of the batch, not only after it
