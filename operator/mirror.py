"""Keep custom resources and database rows in step: the operator's reconcile functions.

Kopf handlers (create, update, resume, delete, timers) and the database listener call these; each takes
the `Runtime` and one object or row, holds that object's lock, reads what it needs fresh, and writes only
`.status` (plus TaskRuns that a Schedule owns). Everything is idempotent, so calling one twice, from two
threads or two operator replicas, changes nothing the second time.

Status writes are merge patches built by `status`; Events are posted when a TaskRun's `Succeeded`
reason or attempt changes, and when a Schedule is stored, refused or triggered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetasks.worker import manifests, protocol
from kubetasks.worker.errors import InvalidInput

from . import children, reconcile, resources, status
from .runtime import Runtime

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return meta["namespace"], meta["name"], meta.get("uid", "")


def _differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(key) != value for key, value in new.items())


def _ready_changed(old: Mapping[str, Any], new: Mapping[str, Any], type_: str) -> bool:
    def pick(s: Mapping[str, Any]) -> tuple[Any, ...]:
        found: Mapping[str, Any] = next((c for c in s.get("conditions") or () if c.get("type") == type_), {})
        return (found.get("status"), found.get("reason"), found.get("message"))

    return pick(old) != pick(new)


# -- TaskRun ----------------------------------------------------------------------------------------------


def sync_task(rt: Runtime, row: dict[str, Any], *, create_missing: bool | None = None) -> None:
    """Mirror one task row onto its TaskRun; create a Schedule's missing TaskRun when `create_missing`
    (by default only for runs still queued or running: older ones are the Schedule sync's business, which
    knows the history limits)."""
    target = reconcile.target_of(row)
    if target is None:
        return
    with rt.locks.hold("taskruns", target.namespace, target.name):
        body = rt.kube.get(resources.TASKRUN, target.namespace, target.name)
        if body is None:
            create = create_missing if create_missing is not None else row["state"] in protocol.LIVE_STATES
            if target.schedule is None or not create:
                return
            body = _create_child(rt, target, row)
            if body is None:
                return
        elif target.uid and body["metadata"].get("uid") != target.uid:
            return  # a newer TaskRun of the same name; the row belonged to a deleted one
        write_taskrun_status(rt, body, row)


def _create_child(rt: Runtime, target: reconcile.Target, row: dict[str, Any]) -> dict[str, Any] | None:
    assert target.schedule is not None
    schedule = rt.kube.get(resources.SCHEDULE, target.namespace, target.schedule)
    if schedule is None or schedule["metadata"].get("deletionTimestamp"):
        return None
    made: dict[str, Any]
    made, created = rt.kube.create(resources.TASKRUN, target.namespace, children.taskrun_body(schedule, row))
    if created:
        log.info("created TaskRun %s/%s for task %s", target.namespace, target.name, row["id"])
    return made


def write_taskrun_status(rt: Runtime, body: dict[str, Any], row: dict[str, Any]) -> None:
    """Patch the TaskRun's status from its row when it differs; post an Event on a transition."""
    namespace, name, _ = _meta(body)
    old = body.get("status") or {}
    new = status.taskrun_status(status.TaskView.from_row(row), _now(), old,
                                generation=body["metadata"].get("generation"))
    if not _differs(old, new):
        return
    if not rt.kube.patch_status(resources.TASKRUN, namespace, name, new):
        return
    moved = status.transition(old, new)
    if moved is not None:
        rt.kube.event(body, *moved)


def reconcile_taskrun(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Create (once) or adopt the TaskRun's task, apply `spec.cancel`, and mirror the row onto the status."""
    namespace, name, uid = _meta(body)
    adopted = children.adopted_task_id(body)
    with rt.connection() as conn:
        if adopted is not None:
            rows = reconcile.task_views(conn, [adopted])
            owner = children.schedule_owner(body)
            if not rows or rows[0]["schedule_name"] != reconcile.row_name(namespace, owner or ""):
                _refuse_taskrun(rt, body, "TaskNotFound", f"task {adopted} of this Schedule no longer exists")
                return
            task_id = adopted
        else:
            try:
                spec = resources.TaskRunSpec.model_validate(dict(body.get("spec") or {}))
                task, created = reconcile.ensure_task(
                    conn, reconcile.taskrun_ref(namespace, name, uid), spec,
                    validate_actor=rt.operator.validate_actors, settings=rt.settings)
            except ValidationError as exc:
                problem = manifests.as_invalid_input(exc, prefix="spec")[0]
                _refuse_taskrun(rt, body, status.invalid_reason(problem.field), str(problem))
                return
            except InvalidInput as exc:
                field = exc.field if exc.field.startswith("spec.") else f"spec.{exc.field}"
                _refuse_taskrun(rt, body, status.invalid_reason(field), f"{field}: {exc.problem}"
                                + (f" ({exc.fix})" if exc.fix else ""))
                return
            if created:
                log.info("TaskRun %s/%s: enqueued task %s", namespace, name, task.id)
            task_id = task.id
        if (body.get("spec") or {}).get("cancel"):
            reconcile.cancel(conn, task_id, f"cancelled by spec.cancel of TaskRun {namespace}/{name}")
        rows = reconcile.task_views(conn, [task_id])
    if rows:
        with rt.locks.hold("taskruns", namespace, name):
            fresh = rt.kube.get(resources.TASKRUN, namespace, name)
            if fresh is not None and fresh["metadata"].get("uid") == uid:
                write_taskrun_status(rt, fresh, rows[0])


def _refuse_taskrun(rt: Runtime, body: Mapping[str, Any], reason: str, message: str) -> None:
    """A TaskRun whose spec cannot be run: Succeeded=False naming the field, and an Event; nothing enqueued."""
    namespace, name, _ = _meta(body)
    old = dict(body.get("status") or {})
    cond = status.condition(status.SUCCEEDED, "False", reason, message, _now(), old.get("conditions") or ())
    new = {"state": None, "conditions": [cond], "message": message,
           "observedGeneration": body["metadata"].get("generation")}
    if _ready_changed(old, new, status.SUCCEEDED):
        rt.kube.patch_status(resources.TASKRUN, namespace, name, new)
        rt.kube.event(dict(body), "Warning", reason, message)


def forget_taskrun(rt: Runtime, body: Mapping[str, Any]) -> None:
    """A TaskRun is being deleted: cancel its task if it has not finished (a finished one is left alone)."""
    namespace, name, uid = _meta(body)
    with rt.connection() as conn:
        task_id = children.adopted_task_id(body)
        if task_id is None:
            task = reconcile.find_task(conn, reconcile.taskrun_ref(namespace, name, uid))
            task_id = task.id if task is not None else None
        if task_id is not None and reconcile.cancel(conn, task_id, f"TaskRun {namespace}/{name} was deleted"):
            log.info("TaskRun %s/%s deleted: cancelled task %s", namespace, name, task_id)


# -- Schedule ---------------------------------------------------------------------------------------------


def reconcile_schedule(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Store the Schedule's row (or refuse the spec), act on a new trigger value, then sync its status."""
    namespace, name, _ = _meta(body)
    generation = body["metadata"].get("generation")
    with rt.locks.hold("schedules", namespace, name), rt.connection() as conn:
        fresh = rt.kube.get(resources.SCHEDULE, namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        old = fresh.get("status") or {}
        try:
            row = reconcile.apply_schedule(conn, namespace, name, dict(body.get("spec") or {}),
                                           validate_actor=rt.operator.validate_actors, settings=rt.settings)
        except InvalidInput as exc:
            # Nothing may run under a spec the user no longer has: the stored row goes until it is fixed.
            reconcile.delete_schedule(conn, namespace, name)
            reason = status.invalid_reason(exc.field)
            new = status.schedule_status(None, _now(), old, generation, invalid=(reason, str(exc)))
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, new)
            if _ready_changed(old, new, status.READY):
                rt.kube.event(fresh, "Warning", reason, str(exc))
            return
        if row["action"] != "unchanged" or old.get("observedGeneration") != generation:
            if row["action"] != "unchanged":
                when = resources.rfc3339(row["next_run"]) if row.get("next_run") else "never"
                next_run = "suspended" if row.get("paused") else f"next run {when}"
                rt.kube.event(fresh, "Normal", "Scheduled", f"Schedule {row['action']}; {next_run}")
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, {"observedGeneration": generation})
            fresh.setdefault("status", {})["observedGeneration"] = generation
        value = ((body["metadata"].get("annotations") or {}).get(resources.TRIGGER_ANNOTATION) or "").strip()
        if value and value != old.get("lastTrigger"):
            task, fired = reconcile.trigger_once(conn, namespace, name, value, settings=rt.settings)
            message = (f"Run {task.id} started by {resources.TRIGGER_ANNOTATION}={value}" if fired
                       else f"{resources.TRIGGER_ANNOTATION}={value}: run {task.id} already covers it")
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, {"lastTrigger": value})
            rt.kube.event(fresh, "Normal", "Triggered", message)
    sync_schedule(rt, namespace, name)


def forget_schedule(rt: Runtime, body: Mapping[str, Any]) -> None:
    namespace, name, _ = _meta(body)
    with rt.locks.hold("schedules", namespace, name), rt.connection() as conn:
        reconcile.delete_schedule(conn, namespace, name)


def sync_schedule(rt: Runtime, namespace: str, name: str) -> None:
    """Make the Schedule's TaskRuns match its runs (create missing, prune past the history limits),
    refresh their statuses, and write the Schedule's status. A refused Schedule (no row) is left as is."""
    with rt.locks.hold("schedules", namespace, name):
        body = rt.kube.get(resources.SCHEDULE, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        spec = body.get("spec") or {}
        with rt.connection() as conn:
            runs = reconcile.schedule_runs(conn, namespace, name, int(spec.get("successfulRunsHistoryLimit", 3)),
                                           int(spec.get("failedRunsHistoryLimit", 1)))
        if runs.row is None:
            return
        _sync_children(rt, body, runs.kept)
        old = body.get("status") or {}
        new = status.schedule_status(_schedule_view(name, runs), _now(), old,
                                     generation=old.get("observedGeneration"))
        if _differs(old, new):
            rt.kube.patch_status(resources.SCHEDULE, namespace, name, new)


def _schedule_view(name: str, runs: reconcile.ScheduleRuns) -> status.ScheduleView:
    row = runs.row or {}
    newest, finished = runs.newest or {}, runs.finished or {}
    failed = finished.get("state") == "error"
    return status.ScheduleView(
        paused=bool(row.get("paused")), next_run=row.get("next_run"), last_run=row.get("last_run"),
        last_success=row.get("last_success"), active=int(row.get("active_runs") or 0),
        last_state=newest.get("state"),
        last_name=reconcile.child_name(name, newest["id"]) if newest.get("id") else None,
        last_failed_reason=status.reason_of("error", finished.get("reason")) if failed else None,
        last_failed_message=(finished.get("error") or None) if failed else None)


def _sync_children(rt: Runtime, schedule: dict[str, Any], kept: Iterable[dict[str, Any]]) -> None:
    namespace, name, _ = _meta(schedule)
    rows = {row["id"]: row for row in kept}
    existing = {tr["metadata"]["name"]: tr for tr in
                rt.kube.list_objects(resources.TASKRUN, namespace, f"{resources.SCHEDULE_LABEL}={name}")}
    labels = {tr_name: _task_label(tr) for tr_name, tr in existing.items()}
    plan = children.plan(labels, rows, name)
    for task_id in plan.create:
        with rt.locks.hold("taskruns", namespace, reconcile.child_name(name, task_id)):
            body, _ = rt.kube.create(resources.TASKRUN, namespace, children.taskrun_body(schedule, rows[task_id]))
            write_taskrun_status(rt, body, rows[task_id])
    for tr_name in plan.delete:
        rt.kube.delete(resources.TASKRUN, namespace, tr_name)
    now = _now()
    for tr_name, tr in existing.items():  # the resync for scheduled runs: statuses from the rows
        label = labels[tr_name]
        if label is None or label not in rows or tr_name in plan.delete or tr["metadata"].get("deletionTimestamp"):
            continue
        listed = tr.get("status") or {}
        if not _differs(listed, status.taskrun_status(status.TaskView.from_row(rows[label]), now, listed)):
            continue
        with rt.locks.hold("taskruns", namespace, tr_name):  # re-read: the listener may have just written
            fresh = rt.kube.get(resources.TASKRUN, namespace, tr_name)
            if fresh is not None:
                write_taskrun_status(rt, fresh, rows[label])


def _task_label(body: Mapping[str, Any]) -> int | None:
    value = ((body.get("metadata") or {}).get("labels") or {}).get(resources.TASK_ID_LABEL, "")
    return int(value) if value.isdigit() else None
