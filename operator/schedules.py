"""Keep Schedules, their rows and the TaskRuns of their runs in step: the Schedule reconcilers.

Kopf's Schedule handlers (create, update, resume, delete, the periodic sync) and the database listener call
these. A Schedule's spec is stored as its row (or refused, naming the field); a new value of the trigger
annotation fires one run; the periodic sync creates the TaskRuns of its runs, prunes those past the history
limits and writes its status. The Schedule's lock is held while TaskRun locks are taken, never the reverse.

Events are posted when a Schedule is stored, refused or triggered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubetasks.worker import scheduler
from kubetasks.worker.errors import InvalidInput

from . import children, resources, status, store, taskruns
from .runtime import Runtime

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def reconcile(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Store the Schedule's row (or refuse the spec), act on a new trigger value, then sync its status."""
    namespace, name, _ = resources.identity(body)
    with rt.locks.hold("schedules", namespace, name):
        fresh = rt.kube.get(resources.SCHEDULE, namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        if _store(rt, body, fresh):
            # Still under the lock, so `fresh` is what the API server holds: no second read.
            sync(rt, namespace, name, body=fresh, generation=body["metadata"].get("generation"))


def _store(rt: Runtime, body: Mapping[str, Any], fresh: dict[str, Any]) -> bool:
    """Store the spec as the row, or refuse it (False); act on new trigger and backfill annotation values."""
    namespace, name, _ = resources.identity(body)
    generation = body["metadata"].get("generation")
    with rt.connection() as conn:
        old = fresh.get("status") or {}
        try:
            row = store.apply_schedule(conn, namespace, name, dict(body.get("spec") or {}),
                                       validate_actor=rt.operator.validate_actors, settings=rt.settings)
        except InvalidInput as exc:
            # Nothing may run under a spec the user no longer has: the stored row goes until it is fixed.
            store.delete_schedule(conn, namespace, name)
            reason = status.invalid_reason(exc.field)
            new = status.schedule_status(None, _now(), old, generation, invalid=(reason, str(exc)))
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, new)
            if status.condition_changed(old, new, status.READY):
                rt.kube.event(fresh, "Warning", reason, str(exc))
            return False
        if row["action"] != "unchanged":  # observedGeneration goes with the status `sync` writes next
            when = resources.rfc3339(row["next_run"]) if row.get("next_run") else "never"
            next_run = "suspended" if row.get("paused") else f"next run {when}"
            rt.kube.event(fresh, "Normal", "Scheduled", f"Schedule {row['action']}; {next_run}")
        value = ((body["metadata"].get("annotations") or {}).get(resources.TRIGGER_ANNOTATION) or "").strip()
        if value and value != old.get("lastTrigger"):
            task, fired = store.trigger_once(conn, namespace, name, value, settings=rt.settings)
            message = (f"Run {task.id} started by {resources.TRIGGER_ANNOTATION}={value}" if fired
                       else f"{resources.TRIGGER_ANNOTATION}={value}: run {task.id} already covers it")
            triggered = resources.ScheduleStatus(last_trigger=value).patch()
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, triggered)
            rt.kube.event(fresh, "Normal", "Triggered", message)
        wanted = ((body["metadata"].get("annotations") or {}).get(resources.BACKFILL_ANNOTATION) or "").strip()
        if wanted and wanted != old.get("lastBackfill"):
            _backfill(rt, conn, fresh, wanted)
    return True


def _backfill(rt: Runtime, conn: Any, schedule: dict[str, Any], value: str) -> None:
    """Act on a new backfill annotation value ('<from>/<to>'): each tick in the range once, then remember it.
    A second pass over one value (a restart before the status write) starts nothing: the ticks have runs."""
    namespace, name, _ = resources.identity(schedule)
    try:
        first, last = scheduler.parse_range(value, field=resources.BACKFILL_ANNOTATION)
        done = scheduler.backfill(conn, store.row_name(namespace, name), first, last, rt.settings)
    except InvalidInput as exc:
        rt.kube.event(schedule, "Warning", "BackfillRefused", str(exc))
    else:
        started = done.started
        rt.kube.event(schedule, "Normal", "Backfilled", (
            f"{resources.BACKFILL_ANNOTATION}={value}: {len(done.ticks)} tick(s), {len(started.created)} run(s) "
            f"started, {len(started.buffered)} buffered, {len(done.existing)} already had a run, "
            f"{len(started.skipped)} skipped by concurrencyPolicy"))
    rt.kube.patch_status(resources.SCHEDULE, namespace, name, resources.ScheduleStatus(last_backfill=value).patch())


def forget(rt: Runtime, body: Mapping[str, Any]) -> None:
    namespace, name, _ = resources.identity(body)
    with rt.locks.hold("schedules", namespace, name), rt.connection() as conn:
        store.delete_schedule(conn, namespace, name)


def sync(rt: Runtime, namespace: str, name: str, *, body: dict[str, Any] | None = None,
         generation: int | None = None, listed: list[dict[str, Any]] | None = None) -> None:
    """Make the Schedule's TaskRuns match its runs (create missing, prune past the history limits),
    refresh their statuses, and write the Schedule's status. A refused Schedule (no row) is left as is.

    `body` is the Schedule just read under its lock (else its view, else a GET), `generation` is written as
    its observedGeneration, `listed` are its TaskRuns just listed (else their views, else a LIST)."""
    with rt.locks.hold("schedules", namespace, name):
        if body is None:
            body = rt.views.get(resources.SCHEDULE, namespace, name) or rt.kube.get(resources.SCHEDULE, namespace,
                                                                                     name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        spec = body.get("spec") or {}
        with rt.connection() as conn:
            runs = store.schedule_runs(conn, namespace, name, int(spec.get("successfulRunsHistoryLimit", 3)),
                                       int(spec.get("failedRunsHistoryLimit", 1)))
        if runs.row is None:
            return
        _sync_children(rt, body, runs.kept, listed)
        old = body.get("status") or {}
        view = _view(name, runs)
        new = status.schedule_status(view, _now(), old, generation=generation if generation is not None
                                     else old.get("observedGeneration"))
        if status.changed(old, new):
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, new)
        if view.paused_reason and status.condition_changed(old, new, status.SUSPENDED):
            rt.kube.event(body, "Warning", status.PAUSED_AFTER_FAILURES, view.paused_reason)


def _view(name: str, runs: store.ScheduleRuns) -> status.ScheduleView:
    row = runs.row or {}
    newest, finished = runs.newest or {}, runs.finished or {}
    failed = finished.get("state") == "error"
    return status.ScheduleView(
        paused=bool(row.get("paused")), next_run=row.get("next_run"), last_run=row.get("last_run"),
        last_success=row.get("last_success"), active=int(row.get("active_runs") or 0),
        last_state=newest.get("state"),
        last_name=children.child_name(name, newest["id"]) if newest.get("id") else None,
        last_failed_reason=status.reason_of("error", finished.get("reason")) if failed else None,
        last_failed_message=(finished.get("error") or None) if failed else None,
        paused_reason=row.get("paused_reason") if row.get("paused") else None)


def _sync_children(rt: Runtime, schedule: dict[str, Any], kept: Iterable[dict[str, Any]],
                   taskruns_of: list[dict[str, Any]] | None) -> None:
    namespace, name, _ = resources.identity(schedule)
    rows = {row["id"]: row for row in kept}
    if taskruns_of is None:
        taskruns_of = rt.views.children(namespace, name)
    if taskruns_of is None:
        taskruns_of = rt.kube.list_objects(resources.TASKRUN, namespace, f"{resources.SCHEDULE_LABEL}={name}")
    existing = {tr["metadata"]["name"]: tr for tr in taskruns_of}
    labels = {tr_name: _task_label(tr) for tr_name, tr in existing.items()}
    plan = children.plan(labels, rows, name)
    for task_id in plan.create:
        with rt.locks.hold("taskruns", namespace, children.child_name(name, task_id)):
            body, _ = rt.kube.create(resources.TASKRUN, namespace, children.taskrun_body(schedule, rows[task_id]))
            taskruns.write_status(rt, body, rows[task_id])
    for tr_name in plan.delete:
        rt.kube.delete(resources.TASKRUN, namespace, tr_name)
    now = _now()
    for tr_name, tr in existing.items():  # the resync for scheduled runs: statuses from the rows
        label = labels[tr_name]
        if label is None or label not in rows or tr_name in plan.delete or tr["metadata"].get("deletionTimestamp"):
            continue
        listed = tr.get("status") or {}
        if not status.changed(listed, status.taskrun_status(status.TaskView.from_row(rows[label]), now, listed)):
            continue
        with rt.locks.hold("taskruns", namespace, tr_name):  # re-read: the listener may have just written
            fresh = rt.kube.get(resources.TASKRUN, namespace, tr_name)
            if fresh is not None:
                taskruns.write_status(rt, fresh, rows[label])


def _task_label(body: Mapping[str, Any]) -> int | None:
    value = ((body.get("metadata") or {}).get("labels") or {}).get(resources.TASK_ID_LABEL, "")
    return int(value) if value.isdigit() else None
