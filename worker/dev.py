"""`kubetasks dev`: everything on one laptop, with nothing to install or configure first.

It starts a private PostgreSQL (gone afterwards), migrates it, applies the manifests, runs `kubetasks worker`
as a child process pointed at it, and prints task counts once a second until Ctrl-C or `--duration`.
Python files beside the manifests are imported by the worker as actor modules. Cron has minute resolution,
so each schedule is also triggered once at start-up (said so on screen), which makes the first runs appear
within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import click

from . import db, manifests, pgserver, protocol, queue, registry, schedules
from .settings import Settings

DEMO_ALLOWLIST = ["echo", "date"]  # what the example manifests run with kubetasks.command


def actor_modules(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """(directories to put on PYTHONPATH, module names) for the *.py files in the manifest folders."""
    folders: list[str] = []
    modules: list[str] = []
    for path in paths:
        if not path.is_dir():
            continue
        found = sorted(p.stem for p in path.glob("*.py") if not p.name.startswith("_"))
        if found:
            folders.append(str(path.resolve()))
            modules.extend(found)
    return folders, modules


def worker_env(dsn: str, folders: list[str], modules: list[str], threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "KUBETASKS_DATABASE__URL": dsn,
        "KUBETASKS_WORKER__MODULES": json.dumps(modules),
        "KUBETASKS_WORKER__THREADS": str(threads),
        "KUBETASKS_WORKER__SCHEDULER_INTERVAL": "1",
        "KUBETASKS_WORKER__RETRY_BACKOFF_BASE": "1",
        # A retry's eta passes without a notification; scan often so retries show up promptly.
        "KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT": "1",
        "KUBETASKS_WORKER__METRICS_PORT": "0",  # several `dev` sessions must not fight over a port
        "PYTHONPATH": os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    env.setdefault("KUBETASKS_WORKER__COMMAND_ALLOWLIST", json.dumps(DEMO_ALLOWLIST))
    return env


def counts(conn: db.Conn) -> dict[str, int]:
    by_state: dict[str, int] = dict.fromkeys(protocol.STATES, 0)
    for row in queue.stats(conn):
        by_state[row["state"]] += row["count"]
    return by_state


def progress_line(elapsed: float, by_state: dict[str, int], delayed: int) -> str:
    parts = [f"{state} {n}" + (f" ({delayed} waiting to retry or for their eta)" if state == "running" and delayed
                               else "") for state, n in by_state.items()]
    return f"{elapsed:5.0f}s  " + "  ".join(parts)


def delayed(conn: db.Conn) -> int:
    return sum(int(row["delayed"]) for row in queue.queue_depth(conn))


def run(paths: Sequence[Path], *, duration: float | None = None, threads: int = 4, trigger: bool = True,
        out: TextIO | None = None) -> int:
    """Run the whole dev loop; returns the exit code (0 when at least one task succeeded)."""
    def say(message: str = "") -> None:
        click.echo(message, file=out)

    # SIGTERM (a process manager, `timeout`) stops as gracefully as Ctrl-C: worker stopped, database removed.
    signal.signal(signal.SIGTERM, _interrupt)
    folders, modules = actor_modules(paths)
    sys.path[:0] = [f for f in folders if f not in sys.path]
    registry.load_modules(modules)  # so `apply` can check actor names, as the worker will import the same
    loaded = manifests.load_sources(list(paths))  # refuse bad manifests before starting anything
    say(f"loaded {len(loaded)} schedule(s) from {', '.join(map(str, paths))}"
        + (f"; actor modules: {', '.join(modules)}" if modules else ""))
    say("starting a private PostgreSQL (removed on exit)…")
    with pgserver.embedded_postgres() as dsn:
        db.migrate(dsn)
        settings = Settings.model_validate({"database": {"url": dsn}})
        with db.connect(dsn) as conn:
            with conn.transaction():
                for _, manifest in loaded:
                    schedules.validate(manifest.row_name, manifest.spec, settings=settings)
                for _, manifest in loaded:
                    row = schedules.apply(conn, manifest.row_name, manifest.spec, settings=settings)
                    nxt = "paused" if row["paused"] else f"next run {row['next_run']:%Y-%m-%d %H:%M:%S%z}"
                    say(f"  {row['name']}: {row['actor']} '{row['cron']}' ({row['time_zone']}), {nxt}")
            if trigger:
                for _, manifest in loaded:
                    schedules.trigger(conn, manifest.row_name, settings=settings)
                say("triggered each schedule once now, so runs show up without waiting for the next minute "
                    "(--no-trigger to skip)")
            return _watch(conn, dsn, folders, modules, threads, duration, say)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(conn: db.Conn, dsn: str, folders: list[str], modules: list[str], threads: int,
           duration: float | None, say: Callable[..., None]) -> int:
    env = worker_env(dsn, folders, modules, threads)
    log_path = Path(tempfile.mkdtemp(prefix="kubetasks-dev-")) / "worker.log"
    say(f"starting the worker ({threads} threads); its log: {log_path}")
    say("press Ctrl-C to stop" + (f" (or wait {duration:g}s)" if duration else ""))
    with open(log_path, "wb") as log_file:
        # Own session: Ctrl-C reaches only us, and we stop the worker gracefully with SIGTERM.
        worker = subprocess.Popen([sys.executable, "-m", "kubetasks.worker.cli", "worker"], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        crashed = False
        try:
            while duration is None or time.monotonic() - started < duration:
                if worker.poll() is not None:
                    crashed = True
                    say(f"the worker exited with code {worker.returncode}; last lines of its log:")
                    for line in log_path.read_text(errors="replace").splitlines()[-15:]:
                        say("  " + line)
                    break
                say(progress_line(time.monotonic() - started, counts(conn), delayed(conn)))
                time.sleep(min(1.0, max(0.0, duration - (time.monotonic() - started))) if duration else 1.0)
        except KeyboardInterrupt:
            say()
        finally:
            _stop(worker)
    return _summary(conn, say, crashed)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def _summary(conn: db.Conn, say: Callable[..., None], crashed: bool) -> int:
    by_state = counts(conn)
    say("summary: " + ", ".join(f"{n} {state}" for state, n in by_state.items() if n) if any(by_state.values())
        else "summary: no tasks ran")
    rows = conn.execute("SELECT coalesce(schedule_name, '-') AS schedule, state::text AS state, count(*) AS n"
                        " FROM kubetasks.tasks GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    per_schedule: dict[str, list[str]] = {}
    for row in rows:
        per_schedule.setdefault(row["schedule"], []).append(f"{row['n']} {row['state']}")
    for name, parts in per_schedule.items():
        say(f"  {name}: {', '.join(parts)}")
    succeeded = by_state["successful"] + by_state["warning"]
    if crashed or not succeeded:
        say("no task succeeded" if not succeeded else "the worker crashed")
        return 1
    return 0

