"""`kubetasks dev`: everything on one laptop, with nothing to install or configure first.

It starts a private PostgreSQL (gone afterwards), migrates it, applies the manifests, runs a worker as a
child process pointed at it, and prints task counts once a second until Ctrl-C or `--duration`. Python files
beside the manifests are imported by the worker as actor modules. Cron has minute resolution, so each
schedule is also triggered once at start-up (said so on screen), which makes the first runs appear within
seconds. The worker gets its settings as JSON in one environment variable, as the runner's own children do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import click

from .. import db, manifests, pgserver, protocol, queries, queue, registry, runner, schedules, workflows
from ..settings import Settings
from . import apply

DEMO_ALLOWLIST = ["echo", "date"]  # what the example manifests run with kubetasks.command
ACTOR_HINT = " (put the *.py file declaring it in a folder given to -f)"


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


def dev_settings(base: Settings, dsn: str, modules: list[str], threads: int) -> Settings:
    """`base` (the environment's settings) pointed at the private database and tuned for watching a demo."""
    overrides = {
        "modules": modules,
        "threads": threads,
        "scheduler_interval": timedelta(seconds=1),
        "retry_backoff_base": timedelta(seconds=1),
        # A retry's eta passes without a notification; scan often so retries show up promptly.
        "consumer_listen_timeout": timedelta(seconds=1),
        "metrics_port": 0,  # several `dev` sessions must not fight over a port
    }
    if "command_allowlist" not in base.worker.model_fields_set:  # KUBETASKS_WORKER__COMMAND_ALLOWLIST wins
        overrides["command_allowlist"] = DEMO_ALLOWLIST
    return base.model_copy(update={"database": base.database.model_copy(update={"url": dsn}),
                                   "worker": base.worker.model_copy(update=overrides)})


def worker_env(settings: Settings, folders: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env[runner.SETTINGS_ENV] = settings.model_dump_json()
    env["PYTHONPATH"] = os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def worker_main() -> None:
    """Entry point of the worker child: `kubetasks worker` with the settings the dev loop handed over."""
    sys.exit(runner.run(Settings.model_validate_json(os.environ[runner.SETTINGS_ENV])))


def counts(conn: db.Conn) -> dict[str, int]:
    by_state: dict[str, int] = dict.fromkeys(protocol.STATES, 0)
    for row in queue.stats(conn):
        by_state[row["state"]] += row["count"]
    return by_state


def progress_line(elapsed: float, by_state: dict[str, int], delayed: int) -> str:
    parts = [f"{state} {n}" + (f" ({delayed} waiting to retry or for their eta)" if state == "running" and delayed
                               else "") for state, n in by_state.items()]
    return f"{elapsed:5.0f}s  " + "  ".join(parts)


def workflow_lines(conn: db.Conn, limit: int = 3) -> list[str]:
    """The latest workflows with their steps' progress: 'workflow 7 ldap-sync ldap: users 21/21 → groups 2/5 …'."""
    lines = []
    for task in queue.list_tasks(conn, queue.TaskFilter(actors=[protocol.WORKFLOW_ACTOR]), limit=limit):
        name = task.args.get("name", "workflow") if isinstance(task.args, dict) else "workflow"
        steps = " → ".join(s.summary() for s in workflows.progress(conn, task.id))
        lines.append(f"       workflow {task.id} {name}: {steps} [{task.state}]")
    return lines


def delayed(conn: db.Conn) -> int:
    return sum(int(row["delayed"]) for row in queue.queue_depth(conn))


def run(paths: Sequence[Path], settings: Settings, *, duration: float | None = None, threads: int = 4,
        trigger: bool = True, dashboard: bool = False, out: TextIO | None = None) -> int:
    """Run the whole dev loop; returns the exit code (0 when at least one task succeeded). `settings` are the
    environment's; the database URL and the worker's tuning are replaced by the dev loop's own."""
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
        settings = dev_settings(settings, dsn, modules, threads)
        db.migrate(dsn)
        for row in apply.apply_all(loaded, settings, actor_hint=ACTOR_HINT, application_name="kubetasks-dev"):
            nxt = "paused" if row["paused"] else f"next run {row['next_run']:%Y-%m-%d %H:%M:%S%z}"
            say(f"  {row['name']}: {row['actor']} '{row['cron']}' ({row['time_zone']}), {nxt}")
        with contextlib.ExitStack() as stack, \
                db.connect(settings.database, application_name="kubetasks-dev") as conn:
            if dashboard:
                _start_dashboard(stack, dsn, modules, folders, say)
            if trigger:
                for _, manifest in loaded:
                    schedules.trigger(conn, manifest.row_name, settings=settings)
                say("triggered each schedule once now, so runs show up without waiting for the next minute "
                    "(--no-trigger to skip)")
            return _watch(conn, settings, folders, duration, say)


def _start_dashboard(stack: contextlib.ExitStack, dsn: str, modules: Sequence[str], folders: Sequence[str],
                     say: Callable[..., None]) -> None:
    """The dashboard in a thread of this process, stopped (by the stack) before the private database goes."""
    from ..dashboard.command import start_background

    try:
        running = start_background(dsn, modules=modules, paths=folders)
    except click.ClickException as exc:  # the `dashboard` extra is not installed: the loop works without it
        say(f"dashboard not started: {exc.format_message()}")
        return
    stack.callback(running.stop)
    say(f"dashboard: {running.url}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(conn: db.Conn, settings: Settings, folders: list[str], duration: float | None,
           say: Callable[..., None]) -> int:
    env = worker_env(settings, folders)
    log_path = Path(tempfile.mkdtemp(prefix="kubetasks-dev-")) / "worker.log"
    say(f"starting the worker ({settings.worker.threads} threads); its log: {log_path}")
    say("press Ctrl-C to stop" + (f" (or wait {duration:g}s)" if duration else ""))
    with open(log_path, "wb") as log_file:
        # Own session: Ctrl-C reaches only us, and we stop the worker gracefully with SIGTERM.
        worker = subprocess.Popen(
            [sys.executable, "-c", "from kubetasks.worker.cli.dev import worker_main; worker_main()"], env=env,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        crashed = False
        shown: dict[str, str] = {}  # the last progress line printed per workflow
        try:
            while duration is None or time.monotonic() - started < duration:
                if worker.poll() is not None:
                    crashed = True
                    say(f"the worker exited with code {worker.returncode}; last lines of its log:")
                    for line in log_path.read_text(errors="replace").splitlines()[-15:]:
                        say("  " + line)
                    break
                say(progress_line(time.monotonic() - started, counts(conn), delayed(conn)))
                for line in workflow_lines(conn):
                    if shown.get(line.split(":")[0]) != line:  # only when its progress changed
                        shown[line.split(":")[0]] = line
                        say(line)
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
    per_schedule: dict[str, list[str]] = {}
    for row in conn.execute(queries.get("task_stats_by_schedule")):
        per_schedule.setdefault(row["schedule"], []).append(f"{row['n']} {row['state']}")
    for name, parts in per_schedule.items():
        say(f"  {name}: {', '.join(parts)}")
    succeeded = sum(by_state[state] for state in protocol.OK_STATES)
    if crashed or not succeeded:
        say("no task succeeded" if not succeeded else "the worker crashed")
        return 1
    return 0
