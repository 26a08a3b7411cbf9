"""`kubetasks queue …` (also `kubetasks queues …`): how deep each queue is, emptying one, and its controls:
pause, resume, concurrency and rate limits (stored in the database, see `controls`)."""

from __future__ import annotations

import dataclasses

import click

from .. import controls, queue
from ..errors import InvalidInput
from .common import connect
from .output import emit_json, json_option, table


@click.group("queue")
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


@queue_group.command("pause")
@click.argument("name")
@click.pass_context
def queue_pause(ctx: click.Context, name: str) -> None:
    """Stop claiming from queue NAME at once; running tasks finish, queued ones wait (survives restarts)."""
    with connect(ctx) as conn:
        controls.set_paused(conn, name, True)
    click.echo(f"paused queue {name}: workers claim nothing from it until `kubetasks queue resume {name}`")


@queue_group.command("resume")
@click.argument("name")
@click.pass_context
def queue_resume(ctx: click.Context, name: str) -> None:
    """Let workers claim from queue NAME again."""
    with connect(ctx) as conn:
        controls.set_paused(conn, name, False)
    click.echo(f"resumed queue {name}")


def _limit(value: str | None, field: str) -> int | None:
    """A whole number of at least 1, or 'none' to clear the limit."""
    assert value is not None
    if value.strip().lower() == "none":
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise InvalidInput(field, f"{value!r} is not a whole number of at least 1", "give 1 or more, or none")
    return int(value)


@queue_group.command("limit")
@click.argument("name")
@click.option("--concurrency", metavar="N|none", help="At most N tasks of the queue running at once, "
              "across all workers.")
@click.option("--key", metavar="ARG|none", help="The args key whose value --per-key limits (e.g. customer_id).")
@click.option("--per-key", metavar="N", help="At most N running tasks per value of --key.")
@click.option("--rate", metavar="N/PERIOD|none", help="At most N starts per PERIOD (50/s, 100/1m, 10/30s).")
@click.pass_context
def queue_limit(ctx: click.Context, name: str, concurrency: str | None, key: str | None, per_key: str | None,
                rate: str | None) -> None:
    """Set the limits of queue NAME; options not given keep their value, `none` clears one."""
    if concurrency is None and key is None and per_key is None and rate is None:
        raise InvalidInput("limit", "no limit given", "pass --concurrency, --key with --per-key, or --rate")
    with connect(ctx) as conn:
        control = controls.get(conn, name)
        if concurrency is not None:
            control = dataclasses.replace(control, concurrency_limit=_limit(concurrency, "--concurrency"))
        if key is not None and key.strip().lower() == "none":
            control = dataclasses.replace(control, concurrency_key=None, key_concurrency_limit=None)
        elif key is not None or per_key is not None:
            control = dataclasses.replace(
                control, concurrency_key=key if key is not None else control.concurrency_key,
                key_concurrency_limit=_limit(per_key, "--per-key") if per_key is not None
                else control.key_concurrency_limit)
            if control.concurrency_key is None or control.key_concurrency_limit is None:
                raise InvalidInput("--per-key" if per_key is None else "--key", "a per-key limit needs both",
                                   "pass --key ARG --per-key N, e.g. --key customer_id --per-key 1")
        if rate is not None:
            starts, period = controls.parse_rate(rate, "--rate") if rate.strip().lower() != "none" else (None, None)
            control = dataclasses.replace(control, rate_limit=starts, rate_period=period)
        stored = controls.set_limits(conn, control)
    click.echo(f"queue {name}: {describe(stored)}")


def describe(control: controls.QueueControl) -> str:
    parts = ["paused" if control.paused else "active"]
    if control.concurrency_limit is not None:
        parts.append(f"at most {control.concurrency_limit} running")
    if control.concurrency_key is not None:
        parts.append(f"at most {control.key_concurrency_limit} per {control.concurrency_key}")
    if control.rate_limit is not None:
        parts.append(f"at most {control.rate_limit} starts per {control.rate_period:g}s")
    if len(parts) == 1:
        parts.append("no limits")
    return ", ".join(parts)


@queue_group.command("show")
@click.argument("name", required=False)
@json_option
@click.pass_context
def queue_show(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """The controls of queue NAME, or of every queue that has some, with the tasks they hold back."""
    with connect(ctx) as conn:
        found = [controls.get(conn, name)] if name else controls.list_controls(conn)
        load = {r["queue"]: r for r in controls.startable(conn, [c.name for c in found])}
    rows = []
    for control in found:
        counts = load.get(control.name) or {"runnable": 0, "running": 0, "startable": 0}
        rows.append(control.as_json() | {"runnable": counts["runnable"], "running": counts["running"],
                                         "held": counts["runnable"] - counts["startable"]})
    if as_json:
        emit_json(rows[0] if name else rows)
        return
    if not rows:
        click.echo("no queue is paused or limited")
        return
    click.echo(table(["QUEUE", "STATE", "CONCURRENCY", "PER KEY", "RATE", "RUNNING", "RUNNABLE", "HELD"], [
        (r["name"], "paused" if r["paused"] else "active", r["concurrency_limit"],
         f"{r['key_concurrency_limit']} per {r['concurrency_key']}" if r["concurrency_key"] else None,
         f"{r['rate_limit']}/{r['rate_period']:g}s" if r["rate_limit"] else None,
         r["running"], r["runnable"], r["held"]) for r in rows]))
