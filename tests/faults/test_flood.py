"""Case 8: floods. Many concurrent enqueues of one deduplicated task must leave one row; 100 000 distinct
tasks worked by one worker must not grow its memory (sampled from /proc/<pid>/status)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors enqueued below
from faults import ledger, probes
from faults.conftest import FaultReport
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue

DEDUP_ENQUEUES = 100_000
DEDUP_CONNECTIONS = 4
DEDUP_SECONDS = 25.0  # cap: on a slow machine the flood stops here and the report says how far it got
DISTINCT = 100_000
RSS_SLACK_KIB = 8 * 1024  # growth tolerated between 10 % and 100 % processed (allocator noise)


@pytest.mark.slow
def test_flood_of_one_deduplicated_task_leaves_one_row(
        dsn: str, conn: db.Conn, fault_report: FaultReport) -> None:
    deadline = time.monotonic() + DEDUP_SECONDS
    ids: list[set[int]] = [set() for _ in range(DEDUP_CONNECTIONS)]
    created: list[int] = [0] * DEDUP_CONNECTIONS
    done: list[int] = [0] * DEDUP_CONNECTIONS
    errors: list[BaseException] = []
    barrier = threading.Barrier(DEDUP_CONNECTIONS)

    def flood(index: int) -> None:
        try:
            with db.connect(dsn) as c:
                barrier.wait()
                for _ in range(DEDUP_ENQUEUES // DEDUP_CONNECTIONS):
                    task = queue.enqueue(c, "t.noop", {"n": 1}, dedup_key="flood")
                    ids[index].add(task.id)
                    created[index] += task.created
                    done[index] += 1
                    if done[index] % 1000 == 0 and time.monotonic() > deadline:
                        return
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(i,)) for i in range(DEDUP_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEDUP_SECONDS + 30)
    seconds = time.monotonic() - started
    rows = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks").fetchone()
    total = sum(done)
    fault_report.record(enqueued=total, succeeded=0, failed=0, lost=0,
                        duplicated=(rows["n"] if rows else 0) - 1,
                        notes=f"{total} enqueues of one dedup key from {DEDUP_CONNECTIONS} connections in "
                        f"{seconds:.1f}s ({total / seconds:.0f}/s){'' if total == DEDUP_ENQUEUES else ', capped'}"
                        f"; rows stored: {rows['n'] if rows else '?'}; created=True {sum(created)} time(s)")
    assert errors == []
    assert rows == {"n": 1}
    assert len(set().union(*ids)) == 1, "different enqueues of one dedup key returned different tasks"
    assert sum(created) == 1
    assert total >= 20_000


@pytest.mark.slow
def test_worker_memory_stays_flat_over_100k_tasks(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    out = tmp_path / "out"
    queue.enqueue_many(conn, "t.record", ({"path": str(out), "value": str(i)} for i in range(DISTINCT)))
    worker = workers(dsn, threads=8, prefetch=56)  # big claim batches: ~2x the throughput of the default
    samples: list[tuple[int, int]] = []  # (tasks finished, VmRSS KiB)

    def sample() -> bool:
        finished = ledger.finished(conn)
        samples.append((finished, probes.rss_kib(worker.pid)))
        return bool(finished == DISTINCT)

    started = time.monotonic()
    wait_for(sample, timeout=180, interval=0.5, what="100 000 tasks done")
    seconds = time.monotonic() - started
    at_10 = next(rss for finished, rss in samples if finished >= DISTINCT // 10)
    at_100 = samples[-1][1]
    peak = max(rss for _, rss in samples)
    tally = ledger.tally(conn, ["t.record"], DISTINCT, ledger.record_runs(out), ledger.by_value)
    fault_report.record(tally, notes=f"{DISTINCT / seconds:.0f} tasks/s; VmRSS {at_10 / 1024:.1f} MiB at 10%, "
                        f"{at_100 / 1024:.1f} MiB at 100% (peak {peak / 1024:.1f} MiB, {len(samples)} samples)")
    assert (tally.succeeded, tally.lost, tally.duplicated) == (DISTINCT, 0, 0)
    assert at_100 - at_10 <= RSS_SLACK_KIB, f"worker RSS grew {(at_100 - at_10) / 1024:.1f} MiB"
