"""Actors the workflow tests run in real worker processes (imported via KUBETASKS_WORKER__MODULES).

Each execution appends one line "<value> <start> <end> <pid>" to a file, so a test can count executions and
check the order of steps by wall-clock timestamps (every worker runs on this host)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kubetasks.worker import context, workflows
from kubetasks.worker.registry import actor


def _mark(path: str, value: str, started: float) -> None:
    with open(path, "a") as f:
        f.write(f"{value} {started:.6f} {time.time():.6f} {os.getpid()}\n")


@actor(name="wf.record", max_retries=3)
def record(path: str, value: str, seconds: float = 0.0, release: str | None = None) -> str:
    """Records one execution; sleeps `seconds` first, or waits until the file `release` exists."""
    started = time.time()
    if release is not None:
        while not os.path.exists(release):
            time.sleep(0.005)
    elif seconds:
        time.sleep(seconds)
    _mark(path, value, started)
    return value


@actor(name="wf.fail", max_retries=0)
def fail(path: str, value: str) -> None:
    _mark(path, value, time.time())
    raise context.TaskError(f"{value} could not sync")


@actor(name="wf.fail_once", max_retries=0)
def fail_once(path: str, value: str, flag: str) -> str:
    """Fails while the file `flag` does not exist."""
    _mark(path, value, time.time())
    if not Path(flag).exists():
        raise context.TaskError(f"{value} is not ready")
    return value


@actor(name="wf.spawner", max_retries=3)
def spawner(path: str, value: str, count: int, prefix: str, seconds: float = 0.0,
            linger: float = 0.0) -> int:
    """Spawns `count` wf.record children into its own step, then lingers `linger` seconds (a window to be
    killed in after the spawn committed)."""
    started = time.time()
    spawned = workflows.spawn(record, ({"path": path, "value": f"{prefix}{i}", "seconds": seconds}
                                       for i in range(count)))
    if linger:
        time.sleep(linger)
    _mark(path, value, started)
    return spawned


@actor(name="wf.callback", max_retries=3)
def callback(path: str, workflow: int, state: str) -> None:
    _mark(path, f"callback:{workflow}:{state}", time.time())


@actor(name="wf.starter", max_retries=3)
def starter(path: str, pages: int, linger: float = 0.0, release: str | None = None) -> int:
    """Starts a workflow from inside a task (as a Schedule's actor would); its pages wait for the file
    `release` when given."""
    flow = workflows.chain(workflows.each("a", record, [{"path": path, "value": f"a{i}", "release": release}
                                                        for i in range(pages)]),
                           workflows.step("b", workflows.call(record, {"path": path, "value": "b"})),
                           name="started")
    wf = workflows.start(None, flow)
    if linger:
        time.sleep(linger)
    _mark(path, f"starter:{wf}", time.time())
    return wf
