"""Case 10: the command actor runs nothing unless allow-listed, and the metrics/health port never shows
task arguments."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import worker_actors  # noqa: F401 - declares the actors enqueued below (builtins: kubetasks.command)
from faults import ledger, probes
from faults.conftest import FaultReport
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import builtins, db, pgserver, queue

assert builtins.command.name == "kubetasks.command"


def command(conn: db.Conn, argv: Any, **args: Any) -> int:
    task_id: int = queue.enqueue(conn, "kubetasks.command", {"argv": argv, **args}, max_retries=0).id
    return task_id


def test_command_actor_runs_nothing_unless_allow_listed(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    echo, touch = shutil.which("echo"), shutil.which("touch")
    assert echo and touch
    marker = tmp_path / "marker"
    workers(dsn, command_allowlist=[echo])
    refused = {
        "not listed": command(conn, [touch, str(marker)]),
        "bare name": command(conn, ["touch", str(marker)]),
        "shell": command(conn, ["/bin/sh", "-c", f"touch {marker}"]),
        "listed name glued to a command": command(conn, [f"{echo};touch {marker}"]),
        "listed name, other directory": command(conn, [f"{Path(echo).parent}/../bin/touch", str(marker)]),
        "argv as one string": command(conn, f"{echo} x; touch {marker}"),
        "empty argv": command(conn, []),
    }
    # Allowed, and run without a shell: the substitution is printed, not executed.
    allowed = command(conn, [echo, f"$(touch {marker})", f"`touch {marker}`"])
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=20, what="the commands to finish")
    ended = {name: queue.get_task(conn, task_id) for name, task_id in refused.items()}
    ran = queue.get_task(conn, allowed)
    wrong = {name: (t.state, t.reason, (t.error or "")[:80]) for name, t in ended.items()
             if (t.state, t.reason, t.attempts) != ("error", "Failed", 1)}
    fault_report.record(enqueued=len(refused) + 1, succeeded=int(ran.state == "successful"),
                        failed=sum(t.state == "error" for t in ended.values()), lost=0, duplicated=0,
                        notes=f"{len(refused)} argv outside the allow-list refused without a retry "
                        f"({len(wrong)} not); marker file {'CREATED' if marker.exists() else 'absent'}")
    assert wrong == {}
    assert all("not allowed" in (t.error or "") or "argv must be" in (t.error or "") for t in ended.values())
    assert ran.state == "successful" and "$(touch" in ran.result["stdout"], ran
    assert not marker.exists(), "a command outside the allow-list ran"


def test_command_allow_list_cannot_be_bypassed_through_the_tasks_path(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    """An allow-list of bare names ("echo", as `kubetasks.command`'s error message suggests) is checked on the
    name, but the name is resolved on the PATH the task's own `env` supplies."""
    marker, bin_dir = tmp_path / "marker", tmp_path / "bin"
    bin_dir.mkdir()
    impostor = bin_dir / "echo"
    impostor.write_text(f"#!/bin/sh\n{shutil.which('touch')} {marker}\n")
    impostor.chmod(0o755)
    workers(dsn, command_allowlist=["echo"])
    task_id = command(conn, ["echo", "hello"], env={"PATH": str(bin_dir)})
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=20, what="the command to finish")
    task = queue.get_task(conn, task_id)
    fault_report.record(enqueued=1, succeeded=int(task.state == "successful"),
                        failed=int(task.state == "error"), lost=0, duplicated=0,
                        notes=f"allow-list ['echo'], task env PATH={bin_dir.name}/: "
                        f"{'the impostor ran (marker created)' if marker.exists() else 'the impostor did not run'}")
    assert not marker.exists(), "an allow-listed name ran a program from a PATH chosen by the task"


def test_metrics_and_health_port_expose_no_task_arguments(
        dsn: str, conn: db.Conn, tmp_path: Path, workers: Callable[..., WorkerProcess],
        fault_report: FaultReport) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    port = pgserver.free_port()
    base = f"http://127.0.0.1:{port}"
    worker = workers(dsn, threads=2, metrics_port=str(port), metrics_host="127.0.0.1")
    wait_for(lambda: probes.status(base + "/readyz") == 200, what="ready")
    out = tmp_path / "out"
    queue.enqueue(conn, "t.record", {"path": str(out), "value": secret})
    queue.enqueue(conn, "t.noop", {"token": secret, "nested": [{"password": secret}]})
    queue.enqueue(conn, "t.fail", {"token": secret}, max_retries=0)  # TypeError: unexpected argument
    queue.enqueue(conn, "kubetasks.command", {"argv": [secret]}, max_retries=0)  # refused, secret in the error
    queue.enqueue(conn, "unknown.actor", {"token": secret}, validate=False, max_retries=0)
    queue.enqueue(conn, "t.noop", {"token": secret}, eta=datetime.now(UTC) + timedelta(days=1))  # delayed
    wait_for(lambda: ledger.unfinished(conn) == 1, timeout=20, what="all but the delayed task to finish")
    # The database gauges are read at the first scrape, now that every state is reached.
    pages = {path: probes.get(base + path) for path in
             ("/metrics", "/healthz", "/readyz", f"/{secret}", f"/metrics?name[]={secret}")}
    leaks = [path for path, (_, body) in pages.items() if secret in body]
    states = {r["state"]: r["n"] for r in conn.execute(
        "SELECT state::text, count(*) AS n FROM kubetasks.tasks GROUP BY 1")}
    fault_report.record(enqueued=6, succeeded=states.get("successful", 0), failed=states.get("error", 0),
                        lost=0, duplicated=0,
                        notes=f"secret in the args of 6 tasks (successful, failed, refused, unknown actor, "
                        f"delayed); pages with it: {leaks or 'none'}; in the worker's own log: "
                        f"{'yes' if secret in worker.output() else 'no'}")
    metrics = pages["/metrics"][1]
    assert pages["/metrics"][0] == 200 and 'kubetasks_tasks{actor="t.noop",state="queued"} 1.0' in metrics
    assert (pages["/healthz"][0], pages["/readyz"][0], pages[f"/{secret}"][0]) == (200, 200, 404)
    assert leaks == []
