"""The kubetasks adapter: the project's own venv, `kubetasks worker` with P processes x T threads."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

from .base import BENCH, PEERS_DIR, Ctx, System

ROOT = BENCH.parent


def import_root() -> Path:
    """A directory holding only a `bench` link to this folder, for PYTHONPATH.

    The repository root itself cannot go on PYTHONPATH: its `operator/` folder would shadow the
    standard library's `operator` module.
    """
    root = BENCH / ".pypath"
    link = root / "bench"
    if not link.is_symlink():
        root.mkdir(exist_ok=True)
        link.symlink_to(BENCH, target_is_directory=True)
    return root


class Kubetasks(System):
    kind = "kubetasks"
    label = "kubetasks"
    python = False  # the system under test, not a peer
    has_workflows = True
    # kubetasks' defaults are its settings for throughput (adaptive prefetch). "defaults" runs a sync no-op
    # actor (on the worker's threads, as dramatiq does); "async" an `async def` one (on the worker's event
    # loop, as graphile-worker, procrastinate and pgqueuer run theirs).
    variants = ("defaults", "async")
    # Live tasks as kubetasks counts them itself (queue_count_tasks): `finished_at IS NULL` is the same rows (a
    # CHECK ties them) and can read the tasks_unfinished index, which a state filter cannot (the planner still
    # scans the table while most rows are live; bench/profile.py polls with EXISTS probes for that reason).
    pending_sql = "SELECT count(*) FROM kubetasks.tasks WHERE finished_at IS NULL"

    def actor(self) -> str:
        return "bench.noop_async" if self.variant == "async" else "bench.noop"

    def settings(self) -> str:
        kind = "an `async def` actor" if self.variant == "async" else "a sync actor"
        return (f"one `kubetasks worker`, KUBETASKS_WORKER__PROCESSES={self.slots.processes}, "
                f"KUBETASKS_WORKER__THREADS={self.slots.threads}, other settings default "
                f"(RETRY_BACKOFF_BASE=0.001 for scenario 5), {kind}")

    def missing(self) -> str | None:
        for module in ("kubetasks.worker.db", "kubetasks.worker.queue", "kubetasks.worker.registry"):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"kubetasks API not importable: {exc}"
        if self.cli() is None:
            return "the `kubetasks` command is not installed in this venv"
        return None

    def cli(self) -> str | None:
        beside = Path(sys.executable).with_name("kubetasks")
        return str(beside) if beside.exists() else shutil.which("kubetasks")

    def driver(self) -> list[str]:
        return [sys.executable, str(PEERS_DIR / "kubetasks_driver.py")]

    def cwd(self) -> Path:
        return ROOT

    def env(self, ctx: Ctx, schedules: int = 0) -> dict[str, str]:
        env = super().env(ctx, schedules)
        env["KUBETASKS_DATABASE__URL"] = ctx.dsn
        env["PYTHONPATH"] = str(import_root())
        env["BENCH_KUBETASKS_ACTOR"] = self.actor()
        # Retry right away, as the peers are configured to (graphile-worker's backoff is fixed).
        env.setdefault("KUBETASKS_WORKER__RETRY_BACKOFF_BASE", "0.001")
        env.setdefault("KUBETASKS_WORKER__METRICS_PORT", "0")
        return env

    def setup_schedules(self, ctx: Ctx, n: int) -> None:
        self.call(ctx, "schedules", "--n", str(n), timeout=600)

    def worker_env(self, ctx: Ctx, schedules: int) -> dict[str, str]:
        env = self.env(ctx, schedules)
        env["KUBETASKS_WORKER__PROCESSES"] = str(self.slots.processes)
        env["KUBETASKS_WORKER__THREADS"] = str(self.slots.threads)
        return env

    def worker_commands(self, schedules: int) -> list[list[str]]:
        return [[self.cli() or "kubetasks", "worker", "--module", "bench.tasks_kubetasks"]]
