"""Actors the cluster tests run in worker pods: the folder holding this file is mounted into the pods
(hostPath, read-only) and put on PYTHONPATH; they write to a second hostPath folder the test reads.

Each execution appends one line to a file, so tests/faults/ledger.py counts executions exactly:
`c.record` (and `c.burst`) append their `value` to a shared file (`ledger.by_value`), `c.hold` writes "start" and then
"done" to its own file (`ledger.by_path`), `c.wait_file` holds until the test creates `release`.
"""

from __future__ import annotations

import os
import time

from kubetasks.worker.registry import actor


def _append(path: str, text: str) -> None:
    # One small O_APPEND write per line: atomic on a local file system, even from several pods at once.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


@actor(name="c.record")
def record(path: str, value: str, seconds: float = 0.0) -> dict[str, str]:
    if seconds:
        time.sleep(seconds)
    _append(path, value)
    return {"value": value}


@actor(name="c.burst")
def burst(path: str, value: str, seconds: float = 0.0) -> dict[str, str]:
    """`c.record` under its own name, so a burst is counted apart from the other tests' tasks."""
    return record(path, value, seconds)


@actor(name="c.hold", time_limit=30)
def hold(path: str, seconds: float) -> None:
    _append(path, "start")
    time.sleep(seconds)
    _append(path, "done")


@actor(name="c.wait_file", time_limit=60)
def wait_file(path: str, release: str) -> None:
    _append(path, "start")
    deadline = time.monotonic() + 55
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    _append(path, "done")


@actor(name="c.gate", time_limit=60)
def gate(path: str, release: str) -> None:
    """`c.wait_file` under its own name, for the tests that only need a task to hold its worker."""
    wait_file(path, release)
