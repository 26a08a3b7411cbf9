"""Notifications on against off: task throughput of one real worker, then the delivery rate of the events.

    .venv/bin/python bench/notifications.py                      # 5 000 tasks per batch, best of 3, 1 x 4 threads
    .venv/bin/python bench/notifications.py --tasks 2000 --runs 2 --json out.json

Throughput: one `kubetasks` worker process (notification delivery off in it, so it measures what the outcome
path pays) drains batches of no-op tasks inserted in one transaction with the rules in the row, as enqueue writes
them: no rules (off), a rule on `failed` (the usual rule, no event here) and a rule on `succeeded` (the worst case,
an outbox event written in every outcome transaction). Batches are interleaved and the best of `--runs` counts, so
drift on a shared machine hits all alike. Delivery: a second worker process (its notification service only: it
consumes no queue of these tasks) sends the events to a local HTTP receiver; the rate is counted from its first
delivery to its last, as recorded in the outbox, so start-up stays out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubetasks.worker import db, pgserver

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from systems.kubetasks import import_root  # noqa: E402

WORKER = [sys.executable, "-c", "import sys; from kubetasks.worker import runner, settings;"
                                " sys.exit(runner.run(settings.get_settings()))"]


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200 and counts requests (HTTP/1.1: keeps connections)."""

    def __init__(self) -> None:
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker(dsn: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    # A PYTHONPATH given to the bench comes first: bench/profile.py --baseline style, another checkout's worker.
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(import_root())) if p)
    environ = {**os.environ, "PYTHONPATH": pythonpath, "KUBETASKS_DATABASE__URL": dsn,
               "KUBETASKS_WORKER__MODULES": json.dumps(["bench.tasks_kubetasks"]),
               "KUBETASKS_WORKER__METRICS_PORT": "0", **env}
    return subprocess.Popen(WORKER, env=environ, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def count(conn: db.Conn, sql: str) -> int:
    row = conn.execute(sql).fetchone()  # type: ignore[call-overload]
    return int(row["n"]) if row else 0


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def batch(conn: db.Conn, tasks: int, rules: list[dict[str, Any]] | None) -> float:
    """Seconds the worker takes to finish `tasks` no-op tasks inserted (with `rules`) in one transaction."""
    conn.execute("DELETE FROM kubetasks.tasks")
    conn.execute("INSERT INTO kubetasks.tasks (actor, args, notify) SELECT 'bench.noop', jsonb_build_object('i', g), "
                 "%s::jsonb FROM generate_series(1, %s) AS g", (json.dumps(rules) if rules else None, tasks))
    started = time.monotonic()
    wait(lambda: count(conn, "SELECT count(*) AS n FROM kubetasks.tasks WHERE finished_at IS NULL") == 0,
         600, "the batch")
    return time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--json", default="", help="also write the figures to this file")
    args = p.parse_args()
    bindir = pgserver.find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL binaries found")
    server = pgserver.LocalPostgres(bindir)
    receiver = Receiver()
    logs = Path(tempfile.mkdtemp(prefix="kubetasks-bench-notifications-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        dsn = server.create_database("notifications")
        db.migrate(dsn)
        with db.connect(dsn) as conn:
            procs.append(start_worker(dsn, logs / "worker.log", KUBETASKS_WORKER__THREADS=str(args.threads),
                                      KUBETASKS_NOTIFICATIONS__ENABLED="false"))
            batch(conn, min(args.tasks, 1000), None)  # warm-up: imports, connections, prefetch estimate
            modes = {"off": None,
                     "rule on failure": [{"events": ["failed"], "webhook": {"url": receiver.url}}],
                     "event per task": [{"events": ["succeeded"], "webhook": {"url": receiver.url}}]}
            seconds: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.runs):
                for mode, rules in modes.items():
                    seconds[mode].append(batch(conn, args.tasks, rules))
            best = {mode: min(times) for mode, times in seconds.items()}
            events = count(conn, "SELECT count(*) AS n FROM kubetasks.notifications")
            procs.append(start_worker(dsn, logs / "delivery.log", KUBETASKS_WORKER__THREADS="1",
                                      KUBETASKS_WORKER__QUEUES='["bench-delivery-only"]'))
            delivered = "SELECT count(*) AS n FROM kubetasks.notifications WHERE state = 'delivered'"
            wait(lambda: count(conn, delivered) > 0, 120, "the first delivery")
            first = conn.execute("SELECT min(delivered_at) AS t FROM kubetasks.notifications").fetchone()
            wait(lambda: count(conn, delivered) == events, 1200, "every delivery")
            last = conn.execute("SELECT max(delivered_at) AS t FROM kubetasks.notifications").fetchone()
            assert first is not None and last is not None
            rate = events / max(1e-6, (last["t"] - first["t"]).total_seconds())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        receiver.close()
        server.destroy()
    figures = {"tasks": args.tasks, "runs": args.runs, "threads": args.threads,
               "tasks_per_second": {mode: args.tasks / s for mode, s in best.items()},
               "time_ratio": {mode: s / best["off"] for mode, s in best.items()},
               "events": events, "delivered_per_second": rate, "received": receiver.count,
               "load": os.getloadavg()[0]}
    print(f"{args.tasks} no-op tasks per batch, 1 x {args.threads}, best of {args.runs} "
          f"(1-min load {figures['load']:.1f}):")
    for mode in modes:
        print(f"  {mode:16} {figures['tasks_per_second'][mode]:7.0f} tasks/s   time x{figures['time_ratio'][mode]:.3f}")
    print(f"delivery: {events} events at {rate:.0f}/s (one worker's notification service, local webhook)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
