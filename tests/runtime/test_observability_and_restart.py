from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors enqueued below
from faults import probes
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, pgserver, queue


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_metrics_and_health_expose_counts_but_never_arguments(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    port = pgserver.free_port()
    start_worker(metrics_port=str(port), metrics_host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready")
    secret = "s3cr3t-token-value"
    task = queue.enqueue(conn, "t.record", {"path": str(tmp_path / "out"), "value": secret})
    queue.enqueue(conn, "t.fail", {})
    wait_for(lambda: queue.get_task(conn, task.id).state == "successful", what="task done")

    def scraped() -> str:
        status, body = get(base + "/metrics")
        ok = ('kubetasks_tasks_finished_total{actor="t.record",state="successful"} 1.0' in body
              and 'kubetasks_tasks_finished_total{actor="t.fail",state="error"} 1.0' in body)
        return body if status == 200 and ok else ""

    body = wait_for(scraped, what="counters in /metrics")
    assert "kubetasks_task_duration_seconds_bucket" in body
    # Database-derived gauges are cached for a few seconds between scrapes.
    body = wait_for(lambda: (lambda b: b if 'kubetasks_tasks{actor="t.record",state="successful"} 1.0' in b
                             else "")(get(base + "/metrics")[1]), timeout=30, interval=0.5,
                    what="database gauges in /metrics")
    assert 'kubetasks_queue_depth' in body
    assert secret not in body
    assert get(base + "/healthz")[0] == 200


def test_metrics_of_a_replica_add_up_the_tasks_of_all_its_processes(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    port = pgserver.free_port()
    start_worker(processes=2, threads=1, prefetch=0, metrics_port=str(port), metrics_host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready")
    pids = tmp_path / "pids"
    queue.enqueue_many(conn, "t.pid", ({"path": str(pids), "seconds": 0.05} for _ in range(40)))
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 40, timeout=30, what="40 tasks run")
    assert len(set(pids.read_text().split())) == 2, "both processes ran tasks"
    line = 'kubetasks_tasks_finished_total{actor="t.pid",state="successful"} 40.0'
    wait_for(lambda: line in get(base + "/metrics")[1], timeout=10, what=line)


def test_a_replicas_forked_process_killed_with_sigkill_is_replaced_and_the_replica_works_on(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    first = start_worker(processes=2, threads=1, prefetch=0)
    pids = tmp_path / "pids"

    def ran_by() -> set[int]:
        return {int(p) for p in pids.read_text().split()} if pids.exists() else set()

    queue.enqueue_many(conn, "t.pid", ({"path": str(pids), "seconds": 0.05} for _ in range(40)))
    wait_for(lambda: len(ran_by()) == 2, timeout=30, what="both processes to run tasks")
    (child,) = ran_by() - {first.pid}
    # Forked at start-up: the first process's own command line, not a fresh interpreter's.
    assert probes.cmdline(child) == probes.cmdline(first.pid)
    live = "SELECT count(*) AS n FROM kubetasks.tasks WHERE state IN ('queued', 'running')"
    wait_for(lambda: conn.execute(live).fetchone()["n"] == 0, timeout=30, what="the first batch done")
    os.kill(child, signal.SIGKILL)
    pids.unlink()
    queue.enqueue_many(conn, "t.pid", ({"path": str(pids), "seconds": 0.05} for _ in range(40)))
    wait_for(lambda: len(ran_by() - {first.pid, child}) == 1, timeout=30, what="a replacement to run tasks")
    (replacement,) = ran_by() - {first.pid, child}
    assert any("child_main" in arg for arg in probes.cmdline(replacement))  # restarted as a fresh interpreter
    assert first.proc.poll() is None


@pytest.fixture
def own_server() -> Iterator[pgserver.LocalPostgres]:
    bindir = pgserver.find_bindir()
    assert bindir is not None
    server = pgserver.LocalPostgres(bindir)
    server.start()
    db.migrate(server.dsn())
    yield server
    server.destroy()


def test_postgres_restart_under_load_loses_nothing(
        own_server: pgserver.LocalPostgres, tmp_path: Path, start_worker: Callable[..., WorkerProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast shutdown and start of PostgreSQL while tasks run: the worker reports not-ready, reconnects by
    itself, and every task ends exactly once."""
    dsn = own_server.dsn()
    port = pgserver.free_port()
    out = tmp_path / "out"
    monkeypatch.setenv("KUBETASKS_DATABASE__URL", dsn)
    worker = WorkerProcess(dsn, tmp_path / "w.log", metrics_port=str(port), metrics_host="127.0.0.1", threads=4)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready")
        with db.connect(dsn) as conn:
            queue.enqueue_many(conn, "t.record", ({"path": str(out), "value": str(i)} for i in range(300)))
        wait_for(lambda: out.exists() and len(out.read_text().split()) > 20, what="some progress")
        own_server.stop("fast")
        wait_for(lambda: get(base + "/readyz")[0] == 503, what="not ready while the database is down")
        own_server.start()
        with db.connect(dsn) as conn:
            def finished() -> bool:
                row = conn.execute("SELECT count(*) FILTER (WHERE state = 'successful') AS ok,"
                                   " count(*) AS n FROM kubetasks.tasks").fetchone()
                return row == {"ok": 300, "n": 300}
            wait_for(finished, timeout=60, what="all 300 tasks successful after the restart")
        # The tasks may all have ended before the restart: readiness comes back with the reconnection.
        wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready again after the restart")
        values = out.read_text().split()
        assert set(values) == {str(i) for i in range(300)}
        # At-least-once: an attempt whose outcome could not be written before the restart runs again.
        # Each such re-run is visible as a WorkerLost attempt row; nothing else may run twice.
        with db.connect(dsn) as conn:
            rerun = conn.execute("SELECT count(*) AS n FROM kubetasks.task_attempts WHERE reason = 'WorkerLost'"
                                 ).fetchone()["n"]  # type: ignore[index]
        assert len(values) - 300 <= rerun
    finally:
        worker.stop()
    print(json.dumps({"duplicates": len(values) - 300}))

