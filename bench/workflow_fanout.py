"""Workflow fan-out: 10 000 children spawned from inside a running task, drained by real workers.

    .venv/bin/python bench/workflow_fanout.py                     # 10 000 children, 2 workers x 8 threads
    .venv/bin/python bench/workflow_fanout.py --children 2000 --workers 1 --json out.json

Prints: the spawn time (one transaction, COPY, from a running actor) and the time to start a 10 000-child group
from outside (its children are inserted from the step's specification by the database); the drain rate of the
children against the same number of plain tasks (what the completion trigger costs per child); the latency
from the last child's outcome to the parent being final, as seen by the database (same transaction) and by a
client polling for it; and the workers' RSS after the warm-up and at the end. Workers are real `kubetasks`
worker processes importing this file for its actors. `make bench` runs the same measurement as its scenario 7
(bench/scenarios.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kubetasks.worker import db, pgserver, queue, workflows
from kubetasks.worker.registry import actor

HERE = Path(__file__).resolve().parent


@actor(name="bench.noop")
def noop(**_: object) -> None:
    return None


@actor(name="bench.spawn")
def spawn(children: int) -> dict[str, float]:
    started = time.perf_counter()
    workflows.spawn(noop, ({"i": i} for i in range(children)))
    return {"spawn_seconds": time.perf_counter() - started}


def start_workers(dsn: str, count: int, threads: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "KUBETASKS_DATABASE__URL": dsn,
           "KUBETASKS_WORKER__MODULES": json.dumps(["workflow_fanout"]), "KUBETASKS_WORKER__METRICS_PORT": "0",
           "KUBETASKS_WORKER__THREADS": str(threads)}
    cmd = [sys.executable, "-c", "import sys; from kubetasks.worker import runner, settings;"
                                 " sys.exit(runner.run(settings.get_settings()))"]
    return [subprocess.Popen(cmd, env=env, stdout=open(log_dir / f"worker{i}.log", "wb"),
                             stderr=subprocess.STDOUT) for i in range(count)]


def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def rss_mb(pids: Iterable[int]) -> float:
    """VmRSS of these processes and their descendants (a worker with PROCESSES > 1 has children), in MB."""
    total_kib, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:  # it ended meanwhile
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


def wait(conn: db.Conn, query: str, params: dict[str, Any], timeout: float = 600) -> float:
    """Poll until the query says done; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query, params).fetchone()  # type: ignore[call-overload]
        if row and row["done"]:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {query}")
        time.sleep(0.002)


def measure(dsn: str, children: int, worker_pids: Sequence[int] = (), timeout: float = 600) -> dict[str, float]:
    """Every figure of the fan-out, in one database the workers `worker_pids` consume."""
    results: dict[str, float] = {}
    # Cheap to poll every 2 ms (it stops at the first unfinished row), so the poller does not slow the drain.
    drained = "SELECT NOT EXISTS (SELECT FROM kubetasks.tasks WHERE state IN ('queued', 'running')) AS done"
    # Every drain rate is read from the rows, as in the suite's scenario 2: from the first task's start until the
    # last one is final (for a workflow: until the parent is, in the last child's transaction).
    span = ("SELECT extract(epoch FROM max(finished_at) - min(started_at)) AS s FROM kubetasks.tasks"
            " WHERE actor = 'bench.noop' AND id > %(after)s AND parent_id IS NULL")
    flow_span = ("SELECT extract(epoch FROM p.finished_at - min(c.started_at)) AS s FROM kubetasks.tasks p"
                 " JOIN kubetasks.tasks c ON c.parent_id = p.id AND c.actor = 'bench.noop'"
                 " WHERE p.id = %(parent)s GROUP BY p.finished_at")
    with db.connect(dsn) as conn:
        # 0. Warm-up: the workers start and take their first tasks, so no figure below pays for it.
        queue.enqueue_many(conn, noop, ({"i": i} for i in range(1000)))
        wait(conn, drained, {}, timeout)
        results["worker_rss_before_mb"] = rss_mb(worker_pids)
        # 1. Plain tasks: enqueue_many, then the time the workers take to drain them.
        after = int(conn.execute("SELECT max(id) AS id FROM kubetasks.tasks").fetchone()["id"])  # type: ignore[index]
        started = time.perf_counter()
        queue.enqueue_many(conn, noop, ({"i": i} for i in range(children)))
        results["plain_enqueue_s"] = time.perf_counter() - started
        wait(conn, drained, {}, timeout)
        seconds = conn.execute(span, {"after": after}).fetchone()
        results["plain_drain_per_s"] = children / float(seconds["s"])  # type: ignore[index]

        # 2. A group from outside: 10 000 children in the step's specification, inserted by the database.
        started = time.perf_counter()
        group = workflows.start(conn, workflows.group(noop, ({"i": i} for i in range(children))))
        results["group_start_s"] = time.perf_counter() - started
        wait(conn, "SELECT finished_at IS NOT NULL AS done FROM kubetasks.tasks WHERE id = %(id)s",
             {"id": group}, timeout)
        seconds = conn.execute(flow_span, {"parent": group}).fetchone()
        results["group_drain_per_s"] = children / float(seconds["s"])  # type: ignore[index]

        # 3. Dynamic fan-out: one running task spawns the children (COPY, one transaction) into its step.
        flow = workflows.chain(workflows.step("pages", workflows.call("bench.spawn", {"children": children})))
        t0 = time.monotonic()
        wf = workflows.start(conn, flow)
        seen = wait(conn, "SELECT finished_at IS NOT NULL AS done FROM kubetasks.tasks WHERE id = %(id)s",
                    {"id": wf}, timeout)
        seen_wall = time.time()
        row = conn.execute(
            "SELECT (SELECT (result->>'spawn_seconds')::float FROM kubetasks.tasks WHERE actor = 'bench.spawn')"
            "       AS spawn_s,"
            "       extract(epoch FROM p.finished_at - (SELECT max(c.finished_at) FROM kubetasks.tasks c"
            "                                           WHERE c.parent_id = p.id)) AS db_latency_s,"
            "       extract(epoch FROM p.finished_at) AS done_at"
            " FROM kubetasks.tasks p WHERE p.id = %s", (wf,)).fetchone()
        assert row is not None
        results["spawn_s"] = float(row["spawn_s"])
        # From the first child's start (the spawn has committed); the spawn's own time is reported apart.
        seconds = conn.execute(flow_span, {"parent": wf}).fetchone()
        results["spawn_drain_per_s"] = children / float(seconds["s"])  # type: ignore[index]
        results["spawn_end_to_end_per_s"] = children / (seen - t0)
        results["last_child_to_parent_db_s"] = float(row["db_latency_s"])
        # What a client sees: the parent is final in the commit of the last child's outcome; from that outcome
        # transaction's start (finished_at) to a 2 ms poller noticing it.
        results["last_child_to_parent_seen_s"] = max(0.0, seen_wall - float(row["done_at"]))
        steps = workflows.progress(conn, wf)
        assert steps[0].total == children + 1 and steps[0].succeeded == children + 1, steps
        results["worker_rss_after_mb"] = rss_mb(worker_pids)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--dsn", help="an empty database (default: a throwaway PostgreSQL)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if dsn is None:
        bindir = pgserver.find_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries: run `make postgres` first")
        server = pgserver.LocalPostgres(bindir, Path(tempfile.mkdtemp(prefix="kubetasks-bench-")))
        server.start()
        dsn = server.create_database("bench")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate(dsn)
        procs = start_workers(dsn, args.workers, args.threads, Path(tempfile.mkdtemp(prefix="kubetasks-bench-")))
        results = measure(dsn, args.children, [proc.pid for proc in procs])
    finally:
        stop_workers(procs)
        if server is not None:
            server.destroy()
    print(f"workflow fan-out, {args.children} children, {args.workers} workers x {args.threads} threads")
    labels = {"plain_enqueue_s": "plain tasks: enqueue_many (COPY)", "plain_drain_per_s": "plain tasks: drained/s",
              "group_start_s": "group: start (children from the spec)", "group_drain_per_s": "group: drained/s",
              "spawn_s": "spawn from a running actor (COPY)", "spawn_drain_per_s": "spawned: drained/s",
              "last_child_to_parent_db_s": "last child -> parent final (database)",
              "last_child_to_parent_seen_s": "last child -> parent seen by a poller",
              "worker_rss_before_mb": "workers' RSS after the warm-up",
              "worker_rss_after_mb": "workers' RSS at the end"}
    for key, label in labels.items():
        value = results[key]
        if key.endswith("per_s"):
            print(f"  {label:<42} {value:10.0f}")
        elif key.endswith("_mb"):
            print(f"  {label:<42} {value:8.1f} MB")
        else:
            print(f"  {label:<42} {value * 1000:8.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"children": args.children, **results}, indent=2))


if __name__ == "__main__":
    main()
