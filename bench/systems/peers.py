"""Adapters for the peer systems; each runs its driver in the peers' own environment."""

from __future__ import annotations

import shutil
from pathlib import Path

from .base import BENCH, PEERS_DIR, PEERS_PYTHON, Slots, System

SETUP_HINT = "run bench/setup.sh first"


class PythonPeer(System):
    script: str = ""

    def missing(self) -> str | None:
        return None if PEERS_PYTHON.exists() else f"{PEERS_PYTHON} is missing: {SETUP_HINT}"

    def driver(self) -> list[str]:
        return [str(PEERS_PYTHON), str(PEERS_DIR / self.script)]


class Procrastinate(PythonPeer):
    name = "procrastinate"
    label = "procrastinate 3.10.0"
    script = "procrastinate_driver.py"
    pending_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    concurrency_note = "P worker processes, each run_worker_async(concurrency=T) with async tasks"


class PgQueuer(PythonPeer):
    name = "pgqueuer"
    label = "pgqueuer 1.6.0 (asyncpg)"
    script = "pgqueuer_driver.py"
    # Finished and failed jobs leave the queue table (finished ones go to pgqueuer_log).
    pending_sql = "SELECT count(*) FROM pgqueuer"
    concurrency_note = "P worker processes, each run(max_concurrent_tasks=T, batch_size=T/2)"


class Dramatiq(PythonPeer):
    name = "dramatiq"
    label = "dramatiq 2.2.1 + dramatiq-postgres 1.4.0"
    script = "dramatiq_driver.py"
    has_scheduler = False  # dramatiq has no scheduler of its own
    keeps_finished = False  # dramatiq-postgres deletes acknowledged messages
    pending_sql = "SELECT count(*) FROM dramatiq.queue WHERE state <> 'rejected'"
    concurrency_note = "one `dramatiq --processes P --threads T` (a master plus P worker processes)"

    def worker_commands(self, slots: Slots, schedules: int) -> list[list[str]]:
        return [[*self.driver(), "worker", "--processes", str(slots.processes),
                 "--concurrency", str(slots.threads)]]


class Graphile(System):
    name = "graphile"
    label = "graphile-worker 0.18.0 (node)"
    keeps_finished = False  # completed jobs are deleted
    pending_sql = "SELECT count(*) FROM graphile_worker._private_jobs"
    concurrency_note = ("P node processes, each run({concurrency: T}) with localQueue size 4T and "
                        "completeJobBatchDelay/failJobBatchDelay 0")

    def missing(self) -> str | None:
        if not shutil.which("node"):
            return "node is not installed"
        if not (BENCH / "graphile" / "node_modules" / "graphile-worker").is_dir():
            return f"bench/graphile/node_modules is missing: {SETUP_HINT}"
        return None

    def driver(self) -> list[str]:
        return [shutil.which("node") or "node", str(BENCH / "graphile" / "driver.mjs")]

    def cwd(self) -> Path:
        return BENCH / "graphile"
