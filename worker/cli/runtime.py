"""The long-running commands: `migrate`, `worker`, `operator` and `dev`.

Each hands this invocation's settings to the runtime it starts; the runtime itself is imported inside the
command, so the short commands and `--help` never pay for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import db, registry
from .common import connect, settings_of
from .output import fail


@click.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the kubetasks schema."""
    with connect(ctx) as conn:
        applied = db.migrate(conn)
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@click.command()
@click.option("--processes", type=click.IntRange(1, 256), help="Worker processes (KUBETASKS_WORKER__PROCESSES).")
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads per process (KUBETASKS_WORKER__THREADS).")
@click.option("--queue", "queues", multiple=True, help="Queue to consume; repeat for several, in order.")
@click.option("--module", "modules", multiple=True, help="Module declaring actors; repeat for several.")
@click.pass_context
def worker(ctx: click.Context, processes: int | None, threads: int | None, queues: tuple[str, ...],
           modules: tuple[str, ...]) -> None:
    """Run tasks (and fire schedules) until stopped with SIGTERM or Ctrl-C."""
    from .. import runner  # the runtime is only needed here

    settings = settings_of(ctx)
    overrides: dict[str, Any] = {}
    if processes is not None:
        overrides["processes"] = processes
    if threads is not None:
        overrides["threads"] = threads
    if queues:
        overrides["queues"] = [registry.validate_queue(q, "--queue") for q in queues]
    if modules:
        overrides["modules"] = [*settings.worker.modules, *modules]
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(update=overrides)})
    sys.exit(runner.run(settings))


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("kopf_args", nargs=-1, type=click.UNPROCESSED)
def operator(kopf_args: tuple[str, ...]) -> None:
    """Run the Kubernetes operator (Kopf): `kopf run -m kubetasks.operator.handlers --standalone`, plus
    KOPF_ARGS (default: --all-namespaces). Needs the `operator` extra: pip install 'kubetasks[operator]'."""
    import importlib.util
    import os

    if importlib.util.find_spec("kopf") is None:
        fail("the operator needs Kopf: pip install 'kubetasks[operator]'")
    args = list(kopf_args) or ["--all-namespaces"]
    os.execv(sys.executable, [sys.executable, "-m", "kopf", "run", "-m", "kubetasks.operator.handlers",
                              "--standalone", *args])


@click.command()
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(path_type=Path),
              default=[Path("examples")], show_default=True,
              help="Schedule manifests (a file or a folder); *.py files in a folder are loaded as actor modules.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.option("--threads", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--no-trigger", is_flag=True, help="Do not start each schedule once at start-up.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Serve the dashboard on 127.0.0.1 (a free port; the printed link holds its token).")
@click.pass_context
def dev(ctx: click.Context, paths: tuple[Path, ...], duration: float | None, threads: int, no_trigger: bool,
        dashboard: bool) -> None:
    """Try kubetasks locally: a private PostgreSQL, your manifests, a worker, live progress."""
    from ..pgserver import PostgresUnavailable
    from . import dev as devloop

    try:
        code = devloop.run(list(paths), settings_of(ctx), duration=duration, threads=threads,
                           trigger=not no_trigger, dashboard=dashboard)
    except PostgresUnavailable as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # before the worker started; the private database is already removed
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)
