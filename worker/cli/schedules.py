"""`kubetasks schedules …`: list, show, pause, resume, trigger and delete stored schedules.

Schedules are named 'namespace/name' as in Kubernetes; a bare 'name' means namespace default, as kubectl has it.
The schedule store is imported inside each command: `kubetasks worker` and `--help` need none of it.
"""

from __future__ import annotations

import click

from .common import connect, schedule_key, settings_of
from .output import emit_json, json_option, seconds, table, when


@click.group("schedules")
def schedules_group() -> None:
    """Inspect and operate on schedules ('namespace/name', or 'name' in namespace default)."""


@schedules_group.command("list")
@json_option
@click.pass_context
def schedules_list(ctx: click.Context, as_json: bool) -> None:
    """Every schedule with its next and last runs."""
    from .. import schedules  # lazy: `kubetasks worker` starts faster

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

    from .. import schedules  # lazy: `kubetasks worker` starts faster

    key = schedule_key(name)
    with connect(ctx) as conn:
        row = schedules.get(conn, key)
        runs = schedules.history(conn, key, limit=10)
    spec = schedules.spec_of(row).model_dump(by_alias=True, exclude_defaults=False)
    if as_json:
        emit_json({"schedule": row, "spec": spec, "runs": [t.as_json() for t in runs]})
        return
    for label, value in (("name", row["name"]), ("source", row["source"]),
                         ("paused", ("yes: " + row["paused_reason"]) if row["paused"] and row.get("paused_reason")
                          else "yes" if row["paused"] else "no"), ("next run", when(row["next_run"])),
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
    from .. import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        schedules.pause(conn, schedule_key(name))
    click.echo(f"{schedule_key(name)} paused")


@schedules_group.command("resume")
@click.argument("name")
@click.pass_context
def schedules_resume(ctx: click.Context, name: str) -> None:
    """Resume: start one run now, then follow the schedule again."""
    from .. import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        row = schedules.resume(conn, schedule_key(name), settings=settings_of(ctx))
    ran = f"task {row['task_id']} started" if row["task_created"] else f"task {row['task_id']} still live"
    click.echo(f"{row['name']} resumed; {ran}; next run {when(row['next_run'])}")


@schedules_group.command("trigger")
@click.argument("name")
@click.pass_context
def schedules_trigger(ctx: click.Context, name: str) -> None:
    """Start one run now (also while paused); the schedule's timing is unchanged."""
    from .. import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        task = schedules.trigger(conn, schedule_key(name), settings=settings_of(ctx))
    click.echo(f"task {task.id} queued" if task.created
               else f"task {task.id} is still {task.state} and the schedule deduplicates; nothing added")


@schedules_group.command("delete")
@click.argument("name")
@click.pass_context
def schedules_delete(ctx: click.Context, name: str) -> None:
    """Delete a schedule; its past runs are kept until purged."""
    from .. import schedules  # lazy: `kubetasks worker` starts faster

    with connect(ctx) as conn:
        schedules.delete(conn, schedule_key(name))
    click.echo(f"{schedule_key(name)} deleted")


@schedules_group.command("backfill")
@click.argument("name")
@click.option("--from", "first", required=True, metavar="TIME", help="First time of the range (RFC 3339).")
@click.option("--to", "last", required=True, metavar="TIME", help="Last time of the range (RFC 3339), inclusive.")
@json_option
@click.pass_context
def schedules_backfill(ctx: click.Context, name: str, first: str, last: str, as_json: bool) -> None:
    """Start one run for each tick between --from and --to that has none, through the concurrency policy."""
    from .. import scheduler  # lazy: `kubetasks worker` starts faster

    start, end = scheduler.parse_time(first, "--from"), scheduler.parse_time(last, "--to")
    with connect(ctx) as conn:
        done = scheduler.backfill(conn, schedule_key(name), start, end, settings_of(ctx))
    started = done.started
    if as_json:
        emit_json({"ticks": done.ticks, "existing": done.existing, "created": started.created,
                   "buffered": started.buffered, "cancelled": started.cancelled,
                   "skipped": [{"tick": tick, "why": why} for tick, why in started.skipped]})
        return
    click.echo(f"{schedule_key(name)}: {len(done.ticks)} tick(s) from {when(start)} to {when(end)}; "
               f"{len(started.created)} run(s) started, {len(started.buffered)} buffered, "
               f"{len(done.existing)} already had a run, {len(started.skipped)} skipped")
    for tick, why in started.skipped:
        click.echo(f"  {when(tick)}: {why}")
