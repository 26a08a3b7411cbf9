"""`kubetasks queue …`: how deep each queue is, and emptying one."""

from __future__ import annotations

import click

from .. import queue
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
