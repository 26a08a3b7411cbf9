"""Adapters for the peer systems; each runs its driver in the peers' own environment.

Each adapter lists its settings variants: the first ("best") is its documented best for
throughput, and where the defaults differ a "default" variant runs beside it. `settings()` is the
exact text shown in the table; `worker_env` is how those settings reach the driver.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .base import BENCH, PEERS_DIR, PEERS_PYTHON, Ctx, System

SETUP_HINT = "run bench/setup.sh first"


class PythonPeer(System):
    script: str = ""

    def missing(self) -> str | None:
        return None if PEERS_PYTHON.exists() else f"{PEERS_PYTHON} is missing: {SETUP_HINT}"

    def driver(self) -> list[str]:
        return [str(PEERS_PYTHON), str(PEERS_DIR / self.script)]


class Procrastinate(PythonPeer):
    kind = "procrastinate"
    label = "procrastinate 3.10.0"
    script = "procrastinate_driver.py"
    pending_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"

    def settings(self) -> str:
        return (f"{self.slots.processes} process(es), each `run_worker_async(concurrency={self.slots.threads})`, "
                "async tasks, PsycopgConnector pool max_size 12")


class PgQueuer(PythonPeer):
    kind = "pgqueuer"
    label = "pgqueuer 1.6.0 (asyncpg)"
    script = "pgqueuer_driver.py"
    # "capped": equal concurrency through max_concurrent_tasks, which pgqueuer requires to be at least
    # 2 x batch_size, so T/2 is the largest (tuned) batch; "default": run()'s own defaults, uncapped.
    variants = ("capped", "default")
    # Finished and failed jobs leave the queue table (finished ones go to pgqueuer_log).
    pending_sql = "SELECT count(*) FROM pgqueuer"

    def run_kwargs(self) -> dict[str, int]:
        """pgqueuer's performance guide: raise batch_size for short jobs; max_concurrent_tasks (the cap
        that makes concurrency equal) must be at least 2 x batch_size, so T/2 is the largest batch."""
        if self.variant == "default":
            return {}
        return {"batch_size": max(1, self.slots.threads // 2), "max_concurrent_tasks": self.slots.threads}

    def settings(self) -> str:
        kwargs = self.run_kwargs()
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        if not kwargs:
            shown = "defaults: batch_size=10, max_concurrent_tasks unset (in-flight jobs not capped)"
        return f"{self.slots.processes} process(es), each `PgQueuer.run({shown})`, async entrypoint"

    def worker_env(self, ctx: Ctx, schedules: int) -> dict[str, str]:
        env = super().worker_env(ctx, schedules)
        env["BENCH_PGQUEUER_RUN"] = json.dumps(self.run_kwargs())
        return env


class Dramatiq(PythonPeer):
    kind = "dramatiq"
    label = "dramatiq 2.2.1 + dramatiq-postgres 1.4.0"
    script = "dramatiq_driver.py"
    has_scheduler = False  # dramatiq has no scheduler of its own
    keeps_finished = False  # dramatiq-postgres deletes acknowledged messages
    pending_sql = "SELECT count(*) FROM dramatiq.queue WHERE state <> 'rejected'"

    def settings(self) -> str:
        return (f"`dramatiq --processes {self.slots.processes} --threads {self.slots.threads}` "
                "(a master plus the worker processes), PostgresBroker(results=False)")

    def worker_commands(self, schedules: int) -> list[list[str]]:
        return [[*self.driver(), "worker", "--processes", str(self.slots.processes),
                 "--concurrency", str(self.slots.threads)]]


# graphile-worker's performance guide (worker.graphile.org/docs/performance) runs with
# localQueue {size: 500}, completeJobBatchDelay 0 and failJobBatchDelay 0; without them it fetches
# one job per query and completes each job in its own statement (its defaults).
GRAPHILE_LOCAL_QUEUE = 500


class Graphile(System):
    kind = "graphile"
    label = "graphile-worker 0.18.0 (node)"
    python = False
    variants = ("best", "default")
    keeps_finished = False  # completed jobs are deleted
    pending_sql = "SELECT count(*) FROM graphile_worker._private_jobs"

    def preset(self) -> dict[str, object]:
        if self.variant == "default":
            return {}
        return {"localQueue": {"size": GRAPHILE_LOCAL_QUEUE}, "completeJobBatchDelay": 0, "failJobBatchDelay": 0}

    def settings(self) -> str:
        preset = json.dumps(self.preset()) if self.preset() else "defaults (no localQueue, no batched completion)"
        return (f"{self.slots.processes} node process(es), each `run({{concurrency: {self.slots.threads}, "
                f"maxPoolSize: 10}})`, preset.worker {preset}")

    def worker_env(self, ctx: Ctx, schedules: int) -> dict[str, str]:
        env = super().worker_env(ctx, schedules)
        env["BENCH_GRAPHILE_PRESET"] = json.dumps(self.preset())
        return env

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
