"""Helpers shared by the Python peer drivers and the kubetasks bench tasks.

Standard library only: this module is imported from the peers' virtualenv
(`bench/.venv-peers`) and from the project's own venv, so it must not pull in
anything that exists in only one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

# Every task appends one line "<tag> <unix time>" to a per-process file in this
# directory when it starts: the orchestrator derives progress, pick-up latency,
# retries and scheduler firings from these lines without querying the database.
OUT_ENV = "BENCH_OUT"
DSN_ENV = "BENCH_DSN"

_fd: int | None = None
_fd_pid = 0


def record(tag: object) -> None:
    """Append "<tag> <now>" for the current process; a single O_APPEND write, so threads need no lock."""
    global _fd, _fd_pid
    now = time.time()
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:  # opened lazily and again after a fork
        out = os.environ.get(OUT_ENV)
        if not out:
            return
        _fd = os.open(os.path.join(out, f"starts-{pid}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fd_pid = pid
    os.write(_fd, f"{tag} {now:.6f}\n".encode())


def should_fail(fail_flag: object, attempt: int) -> bool:
    """A task marked to fail raises on its first attempt only (scenario 5)."""
    return bool(fail_flag) and attempt == 0


class FailOnce(Exception):
    """Raised by a bench task on its planned first-attempt failure."""


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("command", choices=["schema", "enqueue", "prefill", "probe", "steady", "schedules", "worker"])
    p.add_argument("--dsn", default=os.environ.get(DSN_ENV, ""))
    p.add_argument("--n", type=int, default=0, help="tasks to enqueue")
    p.add_argument("--fail-every", type=int, default=0, help="every k-th task fails once (0: none)")
    p.add_argument("--batch", type=int, default=5000, help="tasks per bulk-enqueue call")
    p.add_argument("--finished", type=int, default=0, help="prefill: finished rows")
    p.add_argument("--rate", type=float, default=500.0, help="steady: enqueues per second")
    p.add_argument("--duration", type=float, default=10.0, help="steady: seconds")
    p.add_argument("--out", default=os.environ.get(OUT_ENV, ""), help="directory for start/enqueue records")
    p.add_argument("--concurrency", type=int, default=8, help="worker: slots in this process")
    p.add_argument("--processes", type=int, default=1, help="worker: processes (dramatiq only)")
    p.add_argument("--schedules", type=int, default=0, help="worker: number of every-minute schedules")
    return p


def emit(**result: object) -> None:
    """The driver's answer to the orchestrator: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def fail_flag(i: int, fail_every: int) -> int:
    return 1 if fail_every and i % fail_every == 0 else 0


def steady_sync(enqueue_one: Callable[[int], None], rate: float, duration: float, out: str) -> int:
    """Enqueue one task at a time on a fixed schedule and log each commit time (scenario 3)."""
    total = int(rate * duration)
    lines: list[str] = []
    t0 = time.time()
    for i in range(total):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        enqueue_one(i)
        lines.append(f"{i} {time.time():.6f}\n")
    _write_enqueued(out, lines)
    return total


async def steady_async(enqueue_one: Callable[[int], Awaitable[None]], rate: float, duration: float,
                       out: str) -> int:
    total = int(rate * duration)
    lines: list[str] = []
    t0 = time.time()
    for i in range(total):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await enqueue_one(i)
        lines.append(f"{i} {time.time():.6f}\n")
    _write_enqueued(out, lines)
    return total


def _write_enqueued(out: str, lines: list[str]) -> None:
    with open(os.path.join(out, "enqueued.txt"), "w") as fh:
        fh.writelines(lines)


def chunks(n: int, size: int) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]
