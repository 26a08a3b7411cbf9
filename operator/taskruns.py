"""Keep TaskRuns and their task rows in step: the TaskRun reconcilers.

Kopf's TaskRun handlers (create, update, resume, delete), the database listener and a Schedule's sync call
these; each takes the `Runtime` and one object or row, holds that TaskRun's lock, reads what it needs fresh,
and writes only `.status`. Everything is idempotent, so calling one twice, from two threads or two operator
replicas, changes nothing the second time.

Status writes are merge patches built by `status`; an Event is posted when a TaskRun's `Succeeded` reason
or attempt changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetasks.worker import manifests, protocol
from kubetasks.worker.errors import InvalidInput

from . import children, resources, status, store
from .runtime import Runtime

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def sync_task(rt: Runtime, row: dict[str, Any], *, create_missing: bool | None = None) -> None:
    """Mirror one task row onto its TaskRun; create a Schedule's missing TaskRun when `create_missing`
    (by default only for runs still queued or running: older ones are the Schedule sync's business, which
    knows the history limits)."""
    target = store.target_of(row)
    if target is None:
        return
    seen = rt.views.get(resources.TASKRUN, target.namespace, target.name)
    if seen is not None:  # no request when the watched TaskRun already shows the row
        if target.uid and seen["metadata"].get("uid") != target.uid:
            return  # a newer TaskRun of the same name; the row belonged to a deleted one
        if not _differs(seen, row):
            rt.workflows.note(row)
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
        write_status(rt, body, row)


def _create_child(rt: Runtime, target: store.Target, row: dict[str, Any]) -> dict[str, Any] | None:
    assert target.schedule is not None
    schedule = rt.kube.get(resources.SCHEDULE, target.namespace, target.schedule)
    if schedule is None or schedule["metadata"].get("deletionTimestamp"):
        return None
    made: dict[str, Any]
    made, created = rt.kube.create(resources.TASKRUN, target.namespace, children.taskrun_body(schedule, row))
    if created:
        log.info("created TaskRun %s/%s for task %s", target.namespace, target.name, row["id"])
    return made


def _wanted(body: Mapping[str, Any], row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the TaskRun's status now, the status its row calls for)."""
    old = dict(body.get("status") or {})
    return old, status.taskrun_status(status.TaskView.from_row(row), _now(), old,
                                      generation=body["metadata"].get("generation"))


def _differs(body: Mapping[str, Any], row: dict[str, Any]) -> bool:
    return status.changed(*_wanted(body, row))


def write_status(rt: Runtime, body: dict[str, Any], row: dict[str, Any]) -> None:
    """Patch the TaskRun's status from its row when it differs; post an Event on a transition."""
    namespace, name, _ = resources.identity(body)
    old, new = _wanted(body, row)
    # A running workflow moves on without touching this row: the listener re-reads its progress.
    rt.workflows.note(row)
    if not status.changed(old, new):
        return
    if not rt.kube.patch_status(resources.TASKRUN, namespace, name, new):
        return
    for moved in (status.transition(old, new), status.workflow_transition(old, new)):
        if moved is not None:
            rt.kube.event(body, *moved)


def reconcile(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Create (once) or adopt the TaskRun's task, apply `spec.cancel`, and mirror the row onto the status."""
    namespace, name, uid = resources.identity(body)
    adopted = children.adopted_task_id(body)
    with rt.connection() as conn:
        if adopted is not None:
            rows = store.task_views(conn, [adopted])
            owner = children.schedule_owner(body)
            if not rows or rows[0]["schedule_name"] != store.row_name(namespace, owner or ""):
                _refuse(rt, body, "TaskNotFound", f"task {adopted} of this Schedule no longer exists")
                return
            task_id = adopted
        else:
            try:
                spec = resources.TaskRunSpec.model_validate(dict(body.get("spec") or {}))
                task, created = store.ensure_task(
                    conn, store.taskrun_ref(namespace, name, uid), spec,
                    validate_actor=rt.operator.validate_actors, settings=rt.settings)
            except ValidationError as exc:
                problem = manifests.as_invalid_input(exc, prefix="spec")[0]
                _refuse(rt, body, status.invalid_reason(problem.field), str(problem))
                return
            except InvalidInput as exc:
                field = exc.field if exc.field.startswith("spec.") else f"spec.{exc.field}"
                _refuse(rt, body, status.invalid_reason(field), f"{field}: {exc.problem}"
                        + (f" ({exc.fix})" if exc.fix else ""))
                return
            if created:
                log.info("TaskRun %s/%s: enqueued task %s", namespace, name, task.id)
            task_id = task.id
        if (body.get("spec") or {}).get("cancel"):
            store.cancel(conn, task_id, f"cancelled by spec.cancel of TaskRun {namespace}/{name}")
        rows = store.task_views(conn, [task_id])
    if rows:
        with rt.locks.hold("taskruns", namespace, name):
            fresh = rt.kube.get(resources.TASKRUN, namespace, name)
            if fresh is not None and fresh["metadata"].get("uid") == uid:
                write_status(rt, fresh, rows[0])


def _refuse(rt: Runtime, body: Mapping[str, Any], reason: str, message: str) -> None:
    """A TaskRun whose spec cannot be run: Succeeded=False naming the field, and an Event; nothing enqueued."""
    namespace, name, _ = resources.identity(body)
    old = dict(body.get("status") or {})
    cond = status.condition(status.SUCCEEDED, "False", reason, message, _now(), old.get("conditions") or ())
    new = resources.TaskRunStatus(state=None, conditions=[cond], message=message,
                                  observed_generation=body["metadata"].get("generation")).patch()
    if status.condition_changed(old, new, status.SUCCEEDED):
        rt.kube.patch_status(resources.TASKRUN, namespace, name, new)
        rt.kube.event(dict(body), "Warning", reason, message)


def forget(rt: Runtime, body: Mapping[str, Any]) -> None:
    """A TaskRun is being deleted: cancel its task if it has not finished (a finished one is left alone)."""
    namespace, name, uid = resources.identity(body)
    with rt.connection() as conn:
        task_id = children.adopted_task_id(body)
        if task_id is None:
            task = store.find_task(conn, store.taskrun_ref(namespace, name, uid))
            task_id = task.id if task is not None else None
        if task_id is not None and store.cancel(conn, task_id, f"TaskRun {namespace}/{name} was deleted"):
            log.info("TaskRun %s/%s deleted: cancelled task %s", namespace, name, task_id)
