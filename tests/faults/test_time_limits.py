"""Case 7: tasks that ignore their time limit (`t.block`: a blocking C call; `t.sleep`: a long sleep).
The worker fails them TimedOut on time, stays healthy and keeps running tasks; when more threads are stuck
than KUBETASKS_WORKER__ABANDONED_THREADS_LIMIT the process exits with 75 (EX_TEMPFAIL) to be replaced: the
replica's first process restarts its other processes; the first process itself exits and is restarted by
Kubernetes (or any supervisor), stopping the others cleanly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors enqueued below
from faults import ledger, probes
from faults.conftest import FaultReport
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, pgserver, queue


def metrics_port() -> dict[str, str]:
    return {"metrics_port": str(pgserver.free_port()), "metrics_host": "127.0.0.1"}


def base_url(overrides: dict[str, str]) -> str:
    return f"http://127.0.0.1:{overrides['metrics_port']}"


def records(conn: db.Conn, out: Path, count: int) -> None:
    queue.enqueue_many(conn, "t.record", ({"path": str(out), "value": f"r{i}"} for i in range(count)))


@pytest.mark.slow
def test_time_limit_enforced_on_tasks_that_ignore_it_and_worker_stays_healthy(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    http = metrics_port()
    worker = workers(dsn, threads=6, **http)  # abandoned_threads_limit stays at its default of 8
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    stuck = [queue.enqueue(conn, "t.block", {"path": str(marks / f"block{i}")}).id for i in range(3)]
    stuck += [queue.enqueue(conn, "t.sleep", {"path": str(marks / f"sleep{i}")}).id for i in range(3)]
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=20, what="the six tasks to time out")
    ended = [queue.get_task(conn, task_id) for task_id in stuck]
    wait_for(lambda: worker.output().count("abandoning thread") == 3, timeout=10,
             what="the three threads blocked in C to be abandoned")
    health = (probes.status(base_url(http) + "/healthz"), probes.status(base_url(http) + "/readyz"))
    records(conn, out, 30)
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=20, what="later tasks to run")
    tally = ledger.tally(conn, ["t.record"], 30, ledger.record_runs(out), ledger.by_value)
    durations = sorted(t.duration or 0.0 for t in ended)
    fault_report.record(tally, enqueued=36, failed=tally.failed + sum(t.reason == "TimedOut" for t in ended),
                        notes=f"6 tasks over a 1s limit (3 blocked in C, 3 sleeping) failed TimedOut after "
                        f"{durations[0]:.2f}-{durations[-1]:.2f}s; 3 threads abandoned; /healthz,/readyz {health}")
    assert [(t.state, t.reason, t.attempts) for t in ended] == [("error", "TimedOut", 1)] * 6
    assert all(0.9 < d < 4.0 for d in durations), durations
    assert all((marks / f"sleep{i}").read_text().split() == ["start"] for i in range(3))  # never woke
    assert health == (200, 200)
    assert (tally.succeeded, tally.lost, tally.duplicated) == (30, 0, 0)
    assert worker.proc.poll() is None


@pytest.mark.slow
def test_too_many_stuck_threads_lone_process_exits_75_and_a_replacement_finishes_the_work(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    out = tmp_path / "out"
    worker = workers(dsn, threads=2, abandoned_threads_limit=2)
    blocked = [queue.enqueue(conn, "t.block", {"path": str(tmp_path / f"block{i}")}).id for i in range(2)]
    records(conn, out, 200)
    wait_for(lambda: worker.proc.poll() is not None, timeout=20, what="the worker to exit by itself")
    code = worker.proc.returncode
    worker.stop()
    workers(dsn, threads=2)  # what Kubernetes (restartPolicy: Always) or any supervisor would start
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=30, what="the replacement to finish the work")
    tally = ledger.tally(conn, ["t.record"], 200, ledger.record_runs(out), ledger.by_value)
    reasons = [queue.get_task(conn, task_id).reason for task_id in blocked]
    fault_report.record(tally, enqueued=202, failed=tally.failed + reasons.count("TimedOut"),
                        notes=f"processes=1, limit 2 stuck threads: exit code {code}; blocked tasks {reasons}")
    assert code == 75, "a lone process asks to be restarted with EX_TEMPFAIL (75)"
    assert "stuck past their time limit; restarting this process" in worker.output()
    assert reasons == ["TimedOut", "TimedOut"]
    assert (tally.succeeded, tally.lost, tally.duplicated) == (200, 0, 0)


@pytest.mark.slow
def test_too_many_stuck_threads_supervised_child_is_restarted(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    http = metrics_port()
    out = tmp_path / "out"
    supervisor = workers(dsn, processes=2, threads=1, prefetch=0, abandoned_threads_limit=1, **http)
    wait_for(lambda: probes.status(base_url(http) + "/readyz") == 200, timeout=30, what="the first process ready")
    blocked = queue.enqueue(conn, "t.block", {"path": str(tmp_path / "block")}).id
    # Whichever process claimed it asks to be replaced: the other one restarted by the first, or the first
    # exiting (75) for its own restart.
    wait_for(lambda: "exited with 75; restarting in 0.0s" in supervisor.output() or supervisor.proc.poll() == 75,
             timeout=20, what="the process with the stuck thread to be replaced")
    replaced = "first process" if supervisor.proc.poll() is not None else "second process"
    if supervisor.proc.poll() is not None:
        supervisor = workers(dsn, processes=2, threads=1, prefetch=0, **http)  # what Kubernetes would do
    wait_for(lambda: probes.status(base_url(http) + "/healthz") == 200, what="both processes alive again")
    records(conn, out, 100)
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=30, what="the later tasks to run")
    tally = ledger.tally(conn, ["t.record"], 100, ledger.record_runs(out), ledger.by_value)
    reason = queue.get_task(conn, blocked).reason
    fault_report.record(tally, enqueued=101, failed=tally.failed + (reason == "TimedOut"),
                        notes=f"processes=2, limit 1 stuck thread: the {replaced} exited 75 and was replaced; "
                        f"blocked task {reason}")
    assert supervisor.proc.poll() is None
    assert reason == "TimedOut"
    assert (tally.succeeded, tally.lost, tally.duplicated) == (100, 0, 0)
