"""`kubetasks tasks …` and `kubetasks enqueue`: look at tasks, act on them one by one or by filter, add one."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from .. import notifyrules, protocol, queue, registry, workflows
from ..errors import InvalidInput
from .common import connect, load_actor_modules, schedule_key, settings_of
from .output import emit_json, json_option, seconds, table, when


@click.group()
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
@click.option("--hide-children", is_flag=True, help="Hide the children of workflows (show the workflows).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@click.pass_context
def tasks_list(ctx: click.Context, states: tuple[str, ...], actors: tuple[str, ...], queues: tuple[str, ...],
               schedule: str | None, exclude_successful: bool, hide_children: bool, limit: int,
               as_json: bool) -> None:
    """Tasks, newest first."""
    filters = queue.TaskFilter(states=states, actors=actors, queues=queues, exclude_successful=exclude_successful,
                               schedule=schedule_key(schedule) if schedule else None, top_level=hide_children)
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
    """One task with the log of each attempt; a workflow with its steps and children as a tree."""
    with connect(ctx) as conn:
        task = queue.get_task(conn, task_id)
        attempts = queue.attempts(conn, task_id)
        if workflows.is_workflow(task):
            steps = workflows.progress(conn, task_id)
            kids = [k for s in steps for k in workflows.children(conn, task_id, s.step, limit=SHOWN_CHILDREN)]
            _show_workflow(task, steps, kids, as_json)
            return
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
              ("workflow", None if task.parent_id is None else f"{task.parent_id} (step {task.step})"),
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


SHOWN_CHILDREN = 10  # children listed per step by `tasks show` (the rest are counted)


def _show_workflow(task: queue.Task, steps: list[workflows.StepProgress], kids: list[queue.Task],
                   as_json: bool) -> None:
    by_step: dict[int, list[queue.Task]] = {}
    for kid in kids:
        by_step.setdefault(kid.step or 0, []).append(kid)
    if as_json:
        emit_json({"task": task.as_json(), "steps": [
            {"step": s.step, "name": s.name, "state": s.state, "total": s.total, "done": s.done,
             "succeeded": s.succeeded, "warned": s.warned, "failed": s.failed, "cancelled": s.cancelled,
             "children": [k.id for k in by_step.get(s.step, [])]} for s in steps]})
        return
    name = task.args.get("name", "workflow") if isinstance(task.args, dict) else "workflow"
    click.echo(f"workflow {task.id} {name}: {task.state} ({task.reason})  "
               f"started {when(task.started_at)}, finished {when(task.finished_at)}")
    if task.error:
        click.echo(f"  error: {task.error}")
    for index, s in enumerate(steps):
        last = index == len(steps) - 1
        click.echo(f"{'└─' if last else '├─'} step {s.step} {s.summary()} [{s.state}]")
        shown = by_step.get(s.step, [])[:SHOWN_CHILDREN]
        pad = "   " if last else "│  "
        for kid in shown:
            extra = f"  {kid.error.splitlines()[0]}" if kid.error and kid.state in ("error", "cancelled") else ""
            click.echo(f"{pad}├─ {kid.id} {kid.actor} {kid.state} ({kid.reason}) "
                       f"{seconds(kid.duration)}{extra}")
        hidden = s.total - len(shown)
        if hidden > 0:
            click.echo(f"{pad}└─ … {hidden} more")


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


@click.command()
@click.argument("actor")
@click.option("--args", "args_json", default="{}", show_default=True, metavar="JSON",
              help="Keyword arguments as a JSON object (or positional ones as an array).")
@click.option("--queue", "queue_name", help="Queue (default: the actor's).")
@click.option("--eta", help="Do not run before this ISO 8601 time, e.g. 2030-01-01T09:00:00Z.")
@click.option("--dedup-key", help="Return the live task holding this key instead of adding another.")
@click.option("--priority", type=click.IntRange(-32768, 32767))
@click.option("--module", "modules", multiple=True, help="Module declaring the actor (to validate it).")
@click.option("--no-validate", is_flag=True, help="Do not check that the actor is declared.")
@click.option("--notify-webhook", "webhooks", multiple=True, metavar="URL",
              help="POST a CloudEvent to URL on the --notify-on events. Repeatable.")
@click.option("--notify-email", "emails", multiple=True, metavar="ADDRESS",
              help="E-mail ADDRESS on the --notify-on events (the workers' SMTP settings). Repeatable.")
@click.option("--notify-on", "notify_on", multiple=True, default=("failed",), show_default=True,
              type=click.Choice([e for e in notifyrules.EVENTS if e not in ("consecutiveFailures", "scheduleMissed")]),
              help="Events for --notify-webhook and --notify-email. Repeatable.")
@click.option("--notify", "notify_json", metavar="JSON", help="Notification rules as a JSON list (the "
              "shape of a Schedule's spec.notifications).")
@json_option
@click.pass_context
def enqueue(ctx: click.Context, actor: str, args_json: str, queue_name: str | None, eta: str | None,
            dedup_key: str | None, priority: int | None, modules: tuple[str, ...], no_validate: bool,
            webhooks: tuple[str, ...], emails: tuple[str, ...], notify_on: tuple[str, ...],
            notify_json: str | None, as_json: bool) -> None:
    """Add one task for ACTOR."""
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise InvalidInput("--args", f"is not JSON: {exc}", 'pass e.g. --args \'{"to": "a@example.com"}\'') from None
    rules = _notify_rules(webhooks, emails, notify_on, notify_json)
    settings = settings_of(ctx)
    if not no_validate:
        load_actor_modules(settings, modules)
        if actor not in registry.names():
            raise InvalidInput("actor", f"unknown actor {actor!r}",
                               "pass --module with the module declaring it, set KUBETASKS_WORKER__MODULES, "
                               "or use --no-validate")
    with connect(ctx) as conn:
        task = queue.enqueue(conn, actor, args, queue=queue_name, eta=parse_time(eta, "--eta"),
                             dedup_key=dedup_key, priority=priority, validate=False, settings=settings,
                             notify=rules)
    if as_json:
        emit_json(task.as_json() | {"created": task.created})
    elif task.created:
        click.echo(f"task {task.id} queued on {task.queue}")
    else:
        click.echo(f"task {task.id} already holds dedup key {dedup_key!r} ({task.state}); nothing added")


def _notify_rules(webhooks: tuple[str, ...], emails: tuple[str, ...], events: tuple[str, ...],
                  notify_json: str | None) -> list[notifyrules.NotificationRule] | None:
    """The rules the --notify* options spell, validated (InvalidInput names the option); None: the actor's."""
    given: list[Any] = []
    if notify_json is not None:
        try:
            given = json.loads(notify_json)
        except json.JSONDecodeError as exc:
            raise InvalidInput("--notify", f"is not JSON: {exc}",
                               'pass e.g. --notify \'[{"events": ["failed"], "email": {"to": ["a@b.io"]}}]\'') from None
        rules = notifyrules.parse(given, field="--notify")
    else:
        rules = []
    wanted = [("--notify-webhook", {"events": list(events), "webhook": {"url": url}}) for url in webhooks]
    if emails:
        wanted.append(("--notify-email", {"events": list(events), "email": {"to": list(emails)}}))
    for option, rule in wanted:
        try:
            rules += notifyrules.parse([rule])
        except InvalidInput as exc:
            raise InvalidInput(option, exc.problem, exc.fix) from None
    return rules if notify_json is not None or rules else None


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
