"""`kubetasks`: the command line. Thin: every command calls the queue/schedules API and prints the result.

Errors users can fix (bad input, unknown ids, no database) print one `error: …` line on stderr and exit 2,
without a traceback; `--json` gives machine-readable output where a listing or a record is printed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import db, protocol, queue, registry
from .errors import InvalidInput, KubetasksError
from .settings import Settings, get_settings

EXIT_USAGE = 2  # bad input, unknown id, unreachable database: the user has something to fix


# --- plumbing -------------------------------------------------------------------------------------------

class _Cli(click.Group):
    """Turns the errors a user can fix into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KubetasksError as exc:
            fail(str(exc))
        except psycopg.errors.UndefinedTable:
            fail("the database has no kubetasks schema; run `kubetasks migrate` first")
        except psycopg.OperationalError as exc:
            fail(connection_error(_settings(ctx).database.url, exc))


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def where(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def connection_error(dsn: str, exc: BaseException) -> str:
    reason = (str(exc).strip().splitlines() or ["unknown reason"])[-1]
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return (f"cannot connect to PostgreSQL at {where(dsn)}: {reason} (start the database, or point "
            "--database-url / KUBETASKS_DATABASE__URL at a reachable one)")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


@contextmanager
def connect(ctx: click.Context) -> Iterator[db.Conn]:
    settings = _settings(ctx)
    try:
        conn = db.connect(settings.database.url, connect_timeout=settings.database.connect_timeout,
                          application_name="kubetasks-cli")
    except psycopg.OperationalError as exc:
        fail(connection_error(settings.database.url, exc))
    with conn:
        yield conn


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{value / 60:.1f}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def schedule_key(name: str) -> str:
    """Accept 'name' for 'default/name', as kubectl does."""
    from . import manifests  # lazy: `kubetasks worker` starts faster

    return name if "/" in name else manifests.schedule_name("default", name)


def load_actor_modules(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Import the built-in actors and the user's modules, so actor names can be checked here."""
    if os.getcwd() not in sys.path:  # a console script does not see the current directory, `python -m` does
        sys.path.insert(0, os.getcwd())
    registry.load_modules([*settings.worker.modules, *extra])


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="KUBETASKS_DATABASE__URL", metavar="URL",
              help="PostgreSQL URL or DSN; overrides KUBETASKS_DATABASE__URL.")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Kubernetes-native background tasks on PostgreSQL."""
    if database_url:
        # Through the environment, so code reading get_settings() and child processes agree.
        os.environ["KUBETASKS_DATABASE__URL"] = database_url
        get_settings.cache_clear()
    try:
        ctx.obj = get_settings()
    except ValueError as exc:  # pydantic's ValidationError of a bad KUBETASKS_* variable
        fail(f"invalid KUBETASKS_* environment: {' '.join(str(exc).split())}")


# --- database and worker --------------------------------------------------------------------------------

@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the kubetasks schema."""
    with connect(ctx) as conn:
        applied = db.migrate(conn)
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.option("--processes", type=click.IntRange(1, 256), help="Worker processes (KUBETASKS_WORKER__PROCESSES).")
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads per process (KUBETASKS_WORKER__THREADS).")
@click.option("--queue", "queues", multiple=True, help="Queue to consume; repeat for several, in order.")
@click.option("--module", "modules", multiple=True, help="Module declaring actors; repeat for several.")
@click.pass_context
def worker(ctx: click.Context, processes: int | None, threads: int | None, queues: tuple[str, ...],
           modules: tuple[str, ...]) -> None:
    """Run tasks (and fire schedules) until stopped with SIGTERM or Ctrl-C."""
    from . import runner  # the runtime is only needed here

    settings = _settings(ctx)
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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


# --- tasks ----------------------------------------------------------------------------------------------

@main.group()
def tasks() -> None:
    """Inspect and operate on tasks."""


@tasks.command("stats")
@json_option
@click.pass_context
def tasks_stats(ctx: click.Context, as_json: bool) -> None:
    """Task counts by state and by actor."""
    with connect(ctx) as conn:
        rows = queue.stats(conn)
    by_state = {state: 0 for state in protocol.STATES}
    by_actor: dict[str, dict[str, int]] = {}
    for row in rows:
        by_state[row["state"]] += row["count"]
        by_actor.setdefault(row["actor"], {s: 0 for s in protocol.STATES})[row["state"]] = row["count"]
    if as_json:
        emit_json({"by_state": by_state, "by_actor": by_actor, "total": sum(by_state.values())})
        return
    click.echo(table(["STATE", "TASKS"], [*by_state.items(), ("total", sum(by_state.values()))]))
    if by_actor:
        click.echo()
        click.echo(table(["ACTOR", *(s.upper() for s in protocol.STATES), "TOTAL"],
                         [(a, *c.values(), sum(c.values())) for a, c in sorted(by_actor.items())]))


@tasks.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(protocol.STATES), help="Repeatable.")
@click.option("--actor", "actors", multiple=True, help="Repeatable.")
@click.option("--queue", "queues", multiple=True, help="Repeatable.")
@click.option("--schedule", help="Runs of this schedule ('namespace/name').")
@click.option("--exclude-successful", is_flag=True, help="Hide successful tasks.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@click.pass_context
def tasks_list(ctx: click.Context, states: tuple[str, ...], actors: tuple[str, ...], queues: tuple[str, ...],
               schedule: str | None, exclude_successful: bool, limit: int, as_json: bool) -> None:
    """Tasks, newest first."""
    filters = queue.TaskFilter(states=states, actors=actors, queues=queues, exclude_successful=exclude_successful,
                               schedule=schedule_key(schedule) if schedule else None)
    with connect(ctx) as conn:
        found = queue.list_tasks(conn, filters, limit=limit)
    if as_json:
        emit_json([t.as_json() for t in found])
        return
    if not found:
        click.echo("no tasks")
        return
    click.echo(table(["ID", "STATE", "REASON", "ACTOR", "QUEUE", "ATTEMPTS", "CREATED", "DURATION", "SCHEDULE"],
                     [(t.id, t.state, t.reason, t.actor, t.queue, t.attempts, when(t.created_at),
                       seconds(t.duration), t.schedule_name) for t in found]))


@tasks.command("show")
@click.argument("task_id", type=int)
@json_option
@click.pass_context
def tasks_show(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """One task with the log of each attempt."""
    with connect(ctx) as conn:
        task = queue.get_task(conn, task_id)
        attempts = queue.attempts(conn, task_id)
    current = next((a for a in attempts if a["attempt"] == task.attempts), None)
    previous = [a for a in attempts if a is not current]
    if as_json:
        emit_json({"task": task.as_json(), "current_execution": current, "previous_executions": previous})
        return
    fields = [("id", task.id), ("actor", task.actor), ("queue", task.queue), ("state", task.state),
              ("reason", task.reason), ("attempts", f"{task.attempts} (retries allowed: {task.max_retries})"),
              ("priority", task.priority), ("time limit", seconds(task.time_limit)),
              ("args", json.dumps(task.args, ensure_ascii=False)), ("created", when(task.created_at)),
              ("eta", when(task.eta)), ("started", when(task.started_at)), ("finished", when(task.finished_at)),
              ("duration", seconds(task.duration)), ("worker", task.worker), ("schedule", task.schedule_name),
              ("schedule tick", when(task.schedule_tick) if task.schedule_tick else None),
              ("dedup key", task.dedup_key), ("object", task.object_ref),
              ("result", None if task.result is None else json.dumps(task.result, ensure_ascii=False)),
              ("error", task.error)]
    for label, value in fields:
        if value is not None:
            click.echo(f"{label + ':':<15}{value}")
    click.echo()
    click.echo("current execution:")
    if current is not None:
        _echo_attempt(current)
    elif task.attempts == 0:
        click.echo("  not started yet")
    elif task.worker is not None:
        click.echo(f"  attempt {task.attempts}: running on {task.worker} since {when(task.attempt_started_at)}")
    else:
        click.echo(f"  attempt {task.attempts}: {task.state}, nothing logged")
    click.echo()
    click.echo("previous executions:" + ("" if previous else " none"))
    for attempt in previous:
        _echo_attempt(attempt)


def _echo_attempt(attempt: dict[str, Any]) -> None:
    click.echo(f"  attempt {attempt['attempt']}: {attempt['state']} ({attempt['reason']}) on "
               f"{attempt['worker'] or '-'}, {when(attempt['started_at'])} -> {when(attempt['finished_at'])}")
    if attempt["error"]:
        click.echo("    error: " + attempt["error"].replace("\n", "\n    "))
    for line in (attempt["log"] or "").splitlines():
        click.echo("    | " + line)


@tasks.command("retry")
@click.argument("task_id", type=int)
@click.pass_context
def tasks_retry(ctx: click.Context, task_id: int) -> None:
    """Queue a finished task again, with a fresh retry budget."""
    with connect(ctx) as conn:
        queue.retry_task(conn, task_id)
    click.echo(f"task {task_id} queued again")


@tasks.command("cancel")
@click.argument("task_id", type=int)
@click.pass_context
def tasks_cancel(ctx: click.Context, task_id: int) -> None:
    """Cancel a queued or running task (a running attempt is told to stop)."""
    with connect(ctx) as conn:
        cancelled = queue.cancel_task(conn, task_id, "cancelled from the command line")
        state = cancelled.state if cancelled else queue.get_task(conn, task_id).state
    click.echo(f"task {task_id} cancelled" if cancelled else f"task {task_id} had already finished ({state})")


@tasks.command("delete")
@click.option("--state", "states", multiple=True, type=click.Choice(protocol.STATES), help="Repeatable.")
@click.option("--actor", "actors", multiple=True, help="Repeatable.")
@click.option("--queue", "queues", multiple=True, help="Repeatable.")
@click.option("--schedule", help="Runs of this schedule ('namespace/name').")
@click.option("--include-unfinished", is_flag=True, help="Also delete queued and running tasks.")
@click.pass_context
def tasks_delete(ctx: click.Context, states: tuple[str, ...], actors: tuple[str, ...], queues: tuple[str, ...],
                 schedule: str | None, include_unfinished: bool) -> None:
    """Delete tasks matching the filters (finished ones only, unless --include-unfinished)."""
    filters = queue.TaskFilter(states=states, actors=actors, queues=queues,
                               schedule=schedule_key(schedule) if schedule else None)
    with connect(ctx) as conn:
        deleted = queue.delete_tasks(conn, filters, include_unfinished=include_unfinished)
    click.echo(f"deleted {deleted} task{'s' if deleted != 1 else ''}")


@main.command()
@click.argument("actor")
@click.option("--args", "args_json", default="{}", show_default=True, metavar="JSON",
              help="Keyword arguments as a JSON object (or positional ones as an array).")
@click.option("--queue", "queue_name", help="Queue (default: the actor's).")
@click.option("--eta", help="Do not run before this ISO 8601 time, e.g. 2030-01-01T09:00:00Z.")
@click.option("--dedup-key", help="Return the live task holding this key instead of adding another.")
@click.option("--priority", type=click.IntRange(-32768, 32767))
@click.option("--module", "modules", multiple=True, help="Module declaring the actor (to validate it).")
@click.option("--no-validate", is_flag=True, help="Do not check that the actor is declared.")
@json_option
@click.pass_context
def enqueue(ctx: click.Context, actor: str, args_json: str, queue_name: str | None, eta: str | None,
            dedup_key: str | None, priority: int | None, modules: tuple[str, ...], no_validate: bool,
            as_json: bool) -> None:
    """Add one task for ACTOR."""
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise InvalidInput("--args", f"is not JSON: {exc}", 'pass e.g. --args \'{"to": "a@example.com"}\'') from None
    settings = _settings(ctx)
    if not no_validate:
        load_actor_modules(settings, modules)
        if actor not in registry.names():
            raise InvalidInput("actor", f"unknown actor {actor!r}",
                               "pass --module with the module declaring it, set KUBETASKS_WORKER__MODULES, "
                               "or use --no-validate")
    with connect(ctx) as conn:
        task = queue.enqueue(conn, actor, args, queue=queue_name, eta=parse_time(eta, "--eta"),
                             dedup_key=dedup_key, priority=priority, validate=False, settings=settings)
    if as_json:
        emit_json(task.as_json() | {"created": task.created})
    elif task.created:
        click.echo(f"task {task.id} queued on {task.queue}")
    else:
        click.echo(f"task {task.id} already holds dedup key {dedup_key!r} ({task.state}); nothing added")


def parse_time(text: str | None, field: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, f"{text!r} is not an ISO 8601 time", "write e.g. 2030-01-01T09:00:00Z") from None
    if value.tzinfo is None:
        raise InvalidInput(field, f"{text!r} has no time zone", "append Z for UTC or an offset like +02:00")
    return value


# --- queues ---------------------------------------------------------------------------------------------

@main.group("queue")
def queue_group() -> None:
    """Inspect and operate on queues."""


@queue_group.command("depth")
@json_option
@click.pass_context
def queue_depth(ctx: click.Context, as_json: bool) -> None:
    """Tasks waiting (runnable now or delayed) and executing, per queue."""
    with connect(ctx) as conn:
        rows = sorted(queue.queue_depth(conn), key=lambda r: r["queue"])
    if as_json:
        emit_json(rows)
        return
    click.echo(table(["QUEUE", "RUNNABLE", "DELAYED", "EXECUTING"],
                     [(r["queue"], r["runnable"], r["delayed"], r["executing"]) for r in rows])
               if rows else "no queued or running tasks")


@queue_group.command("flush")
@click.argument("name")
@click.pass_context
def queue_flush(ctx: click.Context, name: str) -> None:
    """Delete the tasks waiting in queue NAME (running ones finish)."""
    with connect(ctx) as conn:
        removed = queue.flush_queue(conn, name)
    click.echo(f"removed {removed} queued task{'s' if removed != 1 else ''} from {name}")


# --- schedules ------------------------------------------------------------------------------------------

@main.group("schedules")
def schedules_group() -> None:
    """Inspect and operate on schedules ('namespace/name', or 'name' in namespace default)."""


@schedules_group.command("list")
@json_option
@click.pass_context
def schedules_list(ctx: click.Context, as_json: bool) -> None:
    """Every schedule with its next and last runs."""
    from . import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        rows = schedules.list_schedules(conn)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no schedules; add some with `kubetasks apply -f`")
        return
    click.echo(table(["NAME", "ACTOR", "SCHEDULE", "TIME ZONE", "PAUSED", "NEXT RUN", "LAST RUN", "LAST SUCCESS",
                      "ACTIVE"],
                     [(r["name"], r["actor"], r["cron"], r["time_zone"], "yes" if r["paused"] else "no",
                       when(r["next_run"]) if not r["paused"] else "-", when(r["last_run"]),
                       when(r["last_success"]), r["active_runs"]) for r in rows]))


@schedules_group.command("show")
@click.argument("name")
@json_option
@click.pass_context
def schedules_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One schedule: its spec, state and recent runs."""
    import yaml

    from . import schedules  # lazy: `kubetasks worker` starts faster

    key = schedule_key(name)
    with connect(ctx) as conn:
        row = schedules.get(conn, key)
        runs = schedules.history(conn, key, limit=10)
    spec = schedules.spec_of(row).model_dump(by_alias=True, exclude_defaults=False)
    if as_json:
        emit_json({"schedule": row, "spec": spec, "runs": [t.as_json() for t in runs]})
        return
    for label, value in (("name", row["name"]), ("source", row["source"]),
                         ("paused", "yes" if row["paused"] else "no"), ("next run", when(row["next_run"])),
                         ("last run", when(row["last_run"])), ("last success", when(row["last_success"])),
                         ("active runs", row["active_runs"])):
        click.echo(f"{label + ':':<14}{value}")
    click.echo("spec:")
    click.echo("  " + yaml.safe_dump(spec, sort_keys=False).rstrip().replace("\n", "\n  "))
    click.echo("recent runs:" + ("" if runs else " none"))
    if runs:
        click.echo(table(["ID", "STATE", "TICK", "CREATED", "DURATION"],
                         [(t.id, t.state, when(t.schedule_tick) if t.schedule_tick else "manual",
                           when(t.created_at), seconds(t.duration)) for t in runs]))


@schedules_group.command("pause")
@click.argument("name")
@click.pass_context
def schedules_pause(ctx: click.Context, name: str) -> None:
    """Stop starting runs until resumed."""
    from . import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        schedules.pause(conn, schedule_key(name))
    click.echo(f"{schedule_key(name)} paused")


@schedules_group.command("resume")
@click.argument("name")
@click.pass_context
def schedules_resume(ctx: click.Context, name: str) -> None:
    """Resume: start one run now, then follow the schedule again."""
    from . import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        row = schedules.resume(conn, schedule_key(name), settings=_settings(ctx))
    ran = f"task {row['task_id']} started" if row["task_created"] else f"task {row['task_id']} still live"
    click.echo(f"{row['name']} resumed; {ran}; next run {when(row['next_run'])}")


@schedules_group.command("trigger")
@click.argument("name")
@click.pass_context
def schedules_trigger(ctx: click.Context, name: str) -> None:
    """Start one run now (also while paused); the schedule's timing is unchanged."""
    from . import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        task = schedules.trigger(conn, schedule_key(name), settings=_settings(ctx))
    click.echo(f"task {task.id} queued" if task.created
               else f"task {task.id} is still {task.state} and the schedule deduplicates; nothing added")


@schedules_group.command("delete")
@click.argument("name")
@click.pass_context
def schedules_delete(ctx: click.Context, name: str) -> None:
    """Delete a schedule; its past runs are kept until purged."""
    from . import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        schedules.delete(conn, schedule_key(name))
    click.echo(f"{schedule_key(name)} deleted")


@main.command("apply")
@click.option("-f", "--filename", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Schedule manifest, or a folder of *.yaml/*.yml; repeatable.")
@click.option("--module", "modules", multiple=True, help="Module declaring actors (to validate them).")
@click.option("--no-validate-actors", is_flag=True, help="Store schedules whose actor is not importable here.")
@click.option("--dry-run", is_flag=True, help="Validate only; store nothing.")
@click.pass_context
def apply_cmd(ctx: click.Context, paths: tuple[Path, ...], modules: tuple[str, ...], no_validate_actors: bool,
              dry_run: bool) -> None:
    """Create or update schedules from manifests. Nothing is stored unless every document is valid."""

    settings = _settings(ctx)
    if not no_validate_actors:
        load_actor_modules(settings, modules)
    found = apply_manifests(ctx, list(paths), validate_actors=not no_validate_actors, dry_run=dry_run)
    for name, action in found:
        click.echo(f"{name} {action}")


def apply_manifests(ctx: click.Context, paths: list[Path], *, validate_actors: bool, dry_run: bool = False,
                    ) -> list[tuple[str, str]]:
    """Validate every manifest, then apply all of them in one transaction; [(name, action)]."""
    from . import manifests, schedules  # lazy: `kubetasks worker` starts faster

    settings = _settings(ctx)
    loaded = manifests.load_sources(paths)
    errors: list[InvalidInput] = []
    for source, manifest in loaded:
        try:
            schedules.validate(manifest.row_name, manifest.spec, validate_actor=validate_actors, settings=settings)
        except InvalidInput as exc:
            hint = " (pass --module, set KUBETASKS_WORKER__MODULES, or use --no-validate-actors)" \
                if exc.field == "spec.actor" else ""
            errors.append(InvalidInput(f"{source} {exc.field}", exc.problem, exc.fix + hint))
    if errors:
        raise manifests.ManifestError(errors)
    if dry_run:
        return [(m.row_name, "valid (dry run)") for _, m in loaded]
    with connect(ctx) as conn, conn.transaction():
        return [(m.row_name, schedules.apply(conn, m.row_name, m.spec, validate_actor=False,
                                             settings=settings)["action"]) for _, m in loaded]


@main.command()
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(path_type=Path),
              default=[Path("examples")], show_default=True,
              help="Schedule manifests (a file or a folder); *.py files in a folder are loaded as actor modules.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.option("--threads", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--no-trigger", is_flag=True, help="Do not start each schedule once at start-up.")
@click.pass_context
def dev(ctx: click.Context, paths: tuple[Path, ...], duration: float | None, threads: int, no_trigger: bool) -> None:
    """Try kubetasks locally: a private PostgreSQL, your manifests, a worker, live progress."""
    from . import dev as devmode
    from .pgserver import PostgresUnavailable

    try:
        code = devmode.run(list(paths), duration=duration, threads=threads, trigger=not no_trigger)
    except PostgresUnavailable as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # before the worker started; the private database is already removed
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
