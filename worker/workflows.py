"""Workflows: groups (fan-out, one completion), chains of steps, completion callbacks and fan-out from inside a
running actor.

    flow = workflows.chain(
        workflows.step("users", workflows.call(list_user_pages, {"page_size": 50})),
        workflows.step("groups", workflows.call(list_group_pages)),
        workflows.step("memberships", workflows.call(sync_memberships)),
        callback=workflows.call(report))
    workflows.start(conn, flow)                     # or, inside an actor: workflows.start(None, flow)

    @actor("ldap.list_user_pages")
    def list_user_pages(page_size: int) -> None:
        workflows.spawn(sync_user_page, ({"page": p} for p in range(pages)))   # joins this task's step

A workflow is a parent task of the pseudo-actor `kubetasks.workflow` that never occupies a worker: it waits
in state `running` with no worker and eta 9999-12-31 (never due), which the claim and rescue queries skip as they are.
Its children are ordinary tasks with `parent_id` and `step`. Everything that moves a workflow on happens in
the database, in the transaction that writes a child's final state (the trigger of migration 0005): the
step's counters are decremented with one UPDATE (its row lock serialises racing last children) and the child
that brings them to zero starts the next step, or finishes the parent and enqueues the callback, exactly once.

Policy: `on_failure="stop"` (default) lets the step with a failed child finish its other children, then ends
the workflow in `error` with a reason naming the first failed child; `"continue"` runs the later steps anyway
and ends in `warning`. A child that warned makes the workflow `warning`; otherwise it ends `successful`.

Spawns and starts made from inside a running task are numbered per task and recorded, so an attempt that is
re-run after its worker was lost (kill -9) makes nothing twice.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from . import context, db, protocol, queries, queue, registry
from .errors import InvalidInput
from .settings import Settings, get_settings

WORKFLOW_ACTOR = protocol.WORKFLOW_ACTOR  # the pseudo-actor of parent tasks; no worker ever runs it
OnFailure = Literal["stop", "continue"]


@dataclass(frozen=True)
class Call:
    """One task to run: an actor, its args and optional per-task options."""

    actor: str | registry.Actor
    args: Any = None
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = None
    time_limit: float | None = None
    retry_backoff: float | None = None


def call(actor: str | registry.Actor, args: Any = None, *, queue: str | None = None, priority: int | None = None,
         max_retries: int | None = None, time_limit: float | None = None,
         retry_backoff: float | None = None) -> Call:
    return Call(actor, args, queue, priority, max_retries, time_limit, retry_backoff)


@dataclass(frozen=True)
class Step:
    """Tasks that run in parallel; the next step starts when all of them (and what they spawn) are final."""

    name: str
    calls: Sequence[Call] = field(default_factory=tuple)


def step(name: str, *calls: Call) -> Step:
    return Step(name, calls)


def each(name: str, actor: str | registry.Actor, many_args: Iterable[Any], **options: Any) -> Step:
    """A fan-out step: one task of `actor` per args."""
    return Step(name, tuple(call(actor, args, **options) for args in many_args))


@dataclass(frozen=True)
class Workflow:
    steps: Sequence[Step]
    name: str = "workflow"
    on_failure: OnFailure = "stop"
    callback: Call | None = None
    queue: str = "default"  # the parent's queue (shown and counted; the parent itself never runs)


def chain(*steps: Step, name: str = "chain", on_failure: OnFailure = "stop", callback: Call | None = None,
          queue: str = "default") -> Workflow:
    """Steps in order: step k+1 starts only when every child of step k is final."""
    return Workflow(steps, name, on_failure, callback, queue)


def group(actor: str | registry.Actor, many_args: Iterable[Any], *, name: str = "group",
          on_failure: OnFailure = "stop", callback: Call | None = None, queue: str = "default",
          **options: Any) -> Workflow:
    """Fan-out: one task per args, all in parallel, one completion (and callback) when all are final."""
    return Workflow((each(name, actor, many_args, **options),), name, on_failure, callback, queue)


def _spec(item: Call, settings: Settings) -> dict[str, Any]:
    params = queue.row_params(item.actor, item.args, queue=item.queue, eta=None, priority=item.priority,
                               max_retries=item.max_retries, time_limit=item.time_limit,
                               retry_backoff=item.retry_backoff, schedule_name=None, schedule_tick=None,
                               object_ref=None, dedup_key=None, validate=False, settings=settings)
    return {"actor": params["actor"], "args": json.loads(params["args"]), "queue": params["queue"],
            "priority": params["priority"], "max_retries": params["max_retries"],
            "time_limit": params["time_limit"], "retry_backoff": params["retry_backoff"]}


def _validate(flow: Workflow) -> None:
    if not flow.steps:
        raise InvalidInput("steps", "a workflow needs at least one step", "give chain() one step or more")
    if flow.on_failure not in ("stop", "continue"):
        raise InvalidInput("on_failure", f"{flow.on_failure!r} is not a policy", "use 'stop' or 'continue'")
    for item in flow.steps:
        if not 1 <= len(item.name) <= 128:
            raise InvalidInput("step", f"{item.name!r}: a step name is 1 to 128 characters", "rename it")
    registry.validate_queue(flow.queue)


def start(conn: db.Conn | None, flow: Workflow, *, schedule_name: str | None = None,
          schedule_tick: datetime | None = None, object_ref: str | None = None,
          settings: Settings | None = None) -> int:
    """Create the workflow and start its first step, in one transaction; returns the parent task's id.

    Inside a running task, `conn` may be None (a connection of the worker's settings is used) and the start is
    made once per task even when the task is run again after its worker was lost."""
    settings = settings or _settings()
    _validate(flow)
    steps = [Jsonb([_spec(item, settings) for item in s.calls]) for s in flow.steps]
    callback = Jsonb(_spec(flow.callback, settings)) if flow.callback is not None else None

    def create(c: db.Conn) -> int:
        row = c.execute(queries.get("workflow_insert_parent"), {
            "queue": flow.queue, "args": Jsonb({"name": flow.name, "steps": [s.name for s in flow.steps]}),
            "schedule_name": schedule_name, "schedule_tick": schedule_tick, "object_ref": object_ref,
            "parent_id": None, "step": None}).fetchone()
        assert row is not None
        wf = int(row["id"])
        c.execute(queries.get("workflow_insert"), {"id": wf, "on_failure": flow.on_failure, "callback": callback,
                                                   "steps": len(flow.steps)})
        c.execute(queries.get("workflow_step_insert_many"), {"id": wf, "names": [s.name for s in flow.steps],
                                                             "children": steps})
        c.execute(queries.get("workflow_advance"), {"id": wf})
        return wf

    ctx = context.current_or_none()
    if ctx is None:
        with _task_conn(conn, settings) as c, c.transaction():
            return create(c)
    with _task_conn(conn, settings) as c, c.transaction():
        seq = _next_seq(ctx)
        if not _claim_seq(c, ctx.task_id, seq):
            done = c.execute(queries.get("spawn_get"), {"task_id": ctx.task_id, "seq": seq}).fetchone()
            assert done is not None
            return int(done["workflow_id"])
        wf = create(c)
        c.execute(queries.get("spawn_record"), {"task_id": ctx.task_id, "seq": seq, "workflow_id": wf,
                                                "children": 0})
        return wf


def spawn(actor: str | registry.Actor, many_args: Iterable[Any], *, conn: db.Conn | None = None,
          queue_name: str | None = None, priority: int | None = None, max_retries: int | None = None,
          time_limit: float | None = None, retry_backoff: float | None = None,
          settings: Settings | None = None) -> int:
    """From inside a running child of a workflow: add one child per args to this task's step, by COPY in one
    transaction (10 000 children take well under a second). The step completes only when they are all final
    too. Made once per task: a re-run after a lost worker returns the first count. Returns the count."""
    ctx = context.current_or_none()
    if ctx is None:
        raise InvalidInput("spawn", "is called outside a running task",
                           "call it from an actor that is a step of a workflow, or use start(group(...))")
    settings = settings or _settings()
    template = queue.row_params(actor, {}, queue=queue_name, eta=None, priority=priority, max_retries=max_retries,
                                 time_limit=time_limit, retry_backoff=retry_backoff, schedule_name=None,
                                 schedule_tick=None, object_ref=None, dedup_key=None, validate=False,
                                 settings=settings)
    limit = settings.worker.args_max_bytes
    texts = [queue.encode_args(args, limit, field=f"args[{index}]") for index, args in enumerate(many_args)]
    with _task_conn(conn, settings) as c, c.transaction():
        seq = _next_seq(ctx)
        if not _claim_seq(c, ctx.task_id, seq):
            done = c.execute(queries.get("spawn_get"), {"task_id": ctx.task_id, "seq": seq}).fetchone()
            assert done is not None
            return int(done["children"])
        place = c.execute(queries.get("spawn_place"), {"task_id": ctx.task_id}).fetchone()
        if place is None:
            raise InvalidInput("spawn", f"task {ctx.task_id} is not a running child of a running workflow",
                               "spawn from an actor started as a step of a workflow")
        wf, at = int(place["workflow_id"]), int(place["step"])
        c.execute(queries.get("spawn_count"), {"workflow_id": wf, "step": at, "n": len(texts)})
        with c.cursor().copy(queries.get("spawn_copy_in")) as copy:
            for text in texts:  # in the column order of spawn_copy_in
                copy.write_row((template["queue"], template["actor"], text, template["priority"],
                                template["max_retries"], template["time_limit"], template["retry_backoff"], wf, at))
        c.execute(queries.get("spawn_record"), {"task_id": ctx.task_id, "seq": seq, "workflow_id": wf,
                                                "children": len(texts)})
        return len(texts)


@contextlib.contextmanager
def _task_conn(conn: db.Conn | None, settings: Settings) -> Iterator[db.Conn]:
    """The caller's connection, or one of its own (closed on exit)."""
    if conn is not None:
        yield conn
        return
    with db.connect(settings.database, application_name="kubetasks-workflows") as own:
        yield own


def _settings() -> Settings:
    ctx = context.current_or_none()
    return ctx.settings if ctx is not None and ctx.settings is not None else get_settings()


def _next_seq(ctx: context.TaskContext) -> int:
    """Spawn number within this attempt; attempts of one task number their spawns alike, in program order."""
    seq: int = getattr(ctx, "_workflow_seq", 0)
    setattr(ctx, "_workflow_seq", seq + 1)  # noqa: B010 - TaskContext is the worker's, not ours to extend
    return seq


def _claim_seq(conn: db.Conn, task_id: int, seq: int) -> bool:
    return conn.execute(queries.get("spawn_claim"), {"task_id": task_id, "seq": seq}).fetchone() is not None


# -- Reading and operating ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepProgress:
    step: int
    name: str
    total: int
    pending: int
    succeeded: int
    warned: int
    failed: int
    cancelled: int
    failed_child: int | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> int:
        return self.total - self.pending

    @property
    def state(self) -> str:
        if self.started_at is None:
            return "waiting"
        return "running" if self.pending or self.finished_at is None else "done"

    def summary(self) -> str:
        """'users 20/20', 'groups 3/4 (1 failed)'."""
        bad = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.cancelled, "cancelled"),
                                              (self.warned, "warned")) if n]
        return f"{self.name} {self.done}/{self.total}" + (f" ({', '.join(bad)})" if bad else "")


def is_workflow(task: queue.Task) -> bool:
    return task.actor == WORKFLOW_ACTOR


def progress(conn: db.Conn, workflow_id: int) -> list[StepProgress]:
    return [StepProgress(**row) for row in conn.execute(queries.get("workflow_step_list"), {"id": workflow_id})]


def children(conn: db.Conn, workflow_id: int, step: int | None = None, limit: int = 1000) -> list[queue.Task]:
    """A workflow's children (of one step, or all), by step then id."""
    return [queue.Task.from_row(row) for row in conn.execute(
        queries.get("workflow_child_list"), {"id": workflow_id, "step": step, "limit": limit})]


def cancel(conn: db.Conn, workflow_id: int, message: str | None = None) -> int | None:
    """Cancel a workflow and its children not yet finished (running ones are told to stop); returns how many
    children were cancelled, None when the workflow had already finished."""
    row = conn.execute(queries.get("workflow_cancel"), {"id": workflow_id, "message": message}).fetchone()
    return None if row is None or row["cancelled"] is None else int(row["cancelled"])


def retry(conn: db.Conn, workflow_id: int) -> int:
    """Re-run the failed and cancelled children of the step where a failed or cancelled workflow stopped, then
    carry on with the chain; returns how many children were queued again."""
    row = conn.execute(queries.get("workflow_retry"), {"id": workflow_id}).fetchone()
    if row is None or row["requeued"] is None:
        task = queue.get_task(conn, workflow_id)
        raise InvalidInput("id", f"workflow {workflow_id} is {task.state}",
                           "only a workflow in error or cancelled can be retried")
    return int(row["requeued"])


def count_by_state(conn: db.Conn) -> Mapping[str, int]:
    """Workflows per state (for the metrics)."""
    return {row["state"]: int(row["count"]) for row in conn.execute(queries.get("workflow_count_by_state"))}
