"""Actors the runtime tests run in real worker processes (imported via KUBETASKS_WORKER__MODULES)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from kubetasks.worker import context
from kubetasks.worker.registry import actor

log = logging.getLogger("worker_actors")


def _mark(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


@actor(name="t.noop")
def noop(**_: object) -> None:
    return None


@actor(name="t.record")
def record(path: str, value: str) -> dict[str, str]:
    """Appends to a file so a test can count executions."""
    _mark(path, value)
    return {"value": value}


@actor(name="t.pid")
def pid(path: str, seconds: float = 0.0) -> None:
    """Appends the id of the process that ran it, after a sleep (so tasks spread over a replica's processes)."""
    time.sleep(seconds)
    _mark(path, str(os.getpid()))


@actor(name="t.flaky", max_retries=3)
def flaky(path: str, fail_times: int, returns: str | None = "ok") -> str | None:
    """Fails `fail_times` times, then succeeds, returning `returns`."""
    _mark(path, "try")
    tries = len(Path(path).read_text().splitlines())
    log.info("attempt %d", tries)
    if tries <= fail_times:
        raise ValueError(f"boom {tries}")
    return returns


@actor(name="t.warn")
def warn() -> None:
    context.current().warning("disk almost full")


@actor(name="t.fail")
def fail() -> None:
    raise context.TaskError("bad input, do not retry")


@actor(name="t.busy", time_limit=1)
def busy(path: str) -> None:
    _mark(path, "start")
    while True:
        pass


@actor(name="t.sleep", time_limit=1)
def sleep(path: str, seconds: float = 3600) -> None:
    _mark(path, "start")
    time.sleep(seconds)
    _mark(path, "woke")


@actor(name="t.block", time_limit=1)
def block(path: str) -> None:
    """Blocks in a C call that no interrupt can stop (os.read on a pipe nobody writes to)."""
    _mark(path, "start")
    r, _w = os.pipe()
    os.read(r, 1)


@actor(name="t.wait_file")
def wait_file(path: str, release: str) -> None:
    """Runs until the test creates `release` (so the test can kill the worker mid-task)."""
    _mark(path, "start")
    while not os.path.exists(release):
        time.sleep(0.02)
    _mark(path, "done")


@actor(name="t.span")
def span(path: str, key: str = "", seconds: float = 0.0, **_: object) -> None:
    """Appends "start KEY T" and "end KEY T" (wall clock) around a sleep, so a test can measure overlaps."""
    _mark(path, f"start {key} {time.time():.6f}")
    time.sleep(seconds)
    _mark(path, f"end {key} {time.time():.6f}")


# -- async actors: run on the worker's event loop ----------------------------------------------------------
@actor(name="t.async_record", max_retries=2)
async def async_record(path: str, value: str, fail_times: int = 0) -> dict[str, object]:
    """Logs, prints and marks around an await; fails its first `fail_times` attempts."""
    ctx = context.current()
    log.info("async attempt %d of %s", ctx.attempt, value)
    await asyncio.sleep(0.01)
    print(f"printed by {value}")
    _mark(path, value)
    if ctx.attempt <= fail_times:
        raise ValueError(f"async boom {ctx.attempt}")
    return {"value": value, "attempt": ctx.attempt}


@actor(name="t.async_span")
async def async_span(path: str, key: str, seconds: float) -> None:
    """"start KEY T" and "end KEY T" around an asyncio sleep, printing KEY in between."""
    _mark(path, f"start {key} {time.time():.6f}")
    for _ in range(3):
        print(f"line of {key}")
        await asyncio.sleep(seconds / 3)
    _mark(path, f"end {key} {time.time():.6f}")


@actor(name="t.async_sleep", time_limit=1)
async def async_sleep(path: str, seconds: float = 3600) -> None:
    _mark(path, "start")
    await asyncio.sleep(seconds)
    _mark(path, "woke")


@actor(name="t.async_warn")
async def async_warn() -> None:
    await asyncio.sleep(0)
    context.current().warning("async disk almost full")
