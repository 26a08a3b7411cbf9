"""Case 1: `kill -9` of a worker in the middle of 1 000 tasks, three times over, while a second worker keeps
running and a replacement starts after each kill. Every task must end exactly once; the attempts in flight
in the killed process come back as WorkerLost and are retried; any execution beyond the first of a task is
explained by one of those WorkerLost attempts."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors enqueued below
from faults import ledger, probes
from faults.conftest import FaultReport
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue

TASKS = 1000
TASK_SECONDS = 0.04  # 1 000 x 40 ms on 2 x 4 threads: ~5 s of work, long enough to kill three times in it
KILL_AT = (0.15, 0.40, 0.65)  # fractions of tasks finished


def progressed(conn: db.Conn, count: float) -> bool:
    return ledger.finished(conn) >= count


@pytest.mark.slow
def test_kill9_three_times_mid_batch_every_task_ends_once(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    queue.enqueue_many(conn, "t.sleep", ({"path": str(runs / str(i)), "seconds": TASK_SECONDS}
                                         for i in range(TASKS)), time_limit=30)
    workers(dsn, threads=4)  # keeps running throughout
    victim = workers(dsn, threads=4)
    killed: list[tuple[int, int]] = []  # (task id, attempt) in flight in a killed process
    for fraction in KILL_AT:
        wait_for(partial(progressed, conn, fraction * TASKS), timeout=60, interval=0.01,
                 what=f"{fraction:.0%} of the tasks finished")
        name = probes.worker_name(victim.pid)
        wait_for(partial(ledger.executing, conn, name), timeout=10, interval=0.005, what="the victim to hold attempts")
        victim.kill()
        # Statements the victim sent just before dying (an outcome write) still commit or roll back until its
        # backends notice: only then is "held by the victim" final.
        wait_for(lambda n=name: conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s",
            (f"kubetasks-worker {n}",)).fetchone() == {"n": 0}, timeout=30, what="the victim's connections gone")
        killed += [(r["id"], r["attempts"]) for r in conn.execute(
            "SELECT id, attempts FROM kubetasks.tasks WHERE worker = %s", (name,))]
        victim = workers(dsn, threads=4)  # the replacement a Deployment would start
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=90, interval=0.1, what="every task final")

    tally = ledger.tally(conn, ["t.sleep"], TASKS, ledger.start_runs(runs), ledger.by_path)
    lost_rows = {(r["task_id"], r["attempt"]) for r in conn.execute(
        "SELECT task_id, attempt FROM kubetasks.task_attempts WHERE reason = 'WorkerLost'")}
    fault_report.record(tally, notes=f"3 kills, {len(killed)} attempts in flight in the killed processes")
    assert (tally.lost, tally.duplicated, tally.never_ran) == (0, 0, 0)
    assert (tally.succeeded, tally.failed) == (TASKS, 0)
    assert len(killed) >= len(KILL_AT)
    assert set(killed) <= lost_rows, f"killed attempts without a WorkerLost row: {set(killed) - lost_rows}"
    # Every WorkerLost attempt was retried: its task needed another attempt after it.
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.task_attempts a JOIN kubetasks.tasks t"
                        " ON t.id = a.task_id WHERE a.reason = 'WorkerLost' AND a.attempt >= t.attempts"
                        ).fetchone() == {"n": 0}
    assert tally.reruns <= tally.worker_lost
