"""The dashboard's schedule reads and actions (list, detail, pause, resume, trigger, edit, create), refusing
changes to schedules a Schedule custom resource owns. No HTTP here; one connection per call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import cron, manifests, registry, schedules
from ..db import Conn
from ..errors import InvalidInput
from ..manifests import ScheduleSpec
from .schemas import validate_args
from .scope import Scope, schedule_namespace
from .tasks import task_json


def schedule_json(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
    out["namespace"] = schedule_namespace(row["name"])
    out["owned_by_resource"] = row.get("source") == "operator"
    return out


def list_schedules(conn: Conn, scope: Scope, namespace: str | None = None) -> list[dict[str, Any]]:
    return [schedule_json(row) for row in schedules.list_schedules(conn)
            if scope.allows(schedule_namespace(row["name"]))
            and (namespace is None or schedule_namespace(row["name"]) == namespace)]


def schedule_detail(conn: Conn, name: str, runs: int = 10) -> dict[str, Any]:
    data = schedule_json(schedules.get(conn, name))
    data["recent_runs"] = [task_json(t) for t in schedules.history(conn, name, limit=runs)]
    return data


class OwnedByResource(InvalidInput):
    """A change to a schedule a Schedule custom resource owns: GitOps would undo it, so say where to make it."""

    def __init__(self, name: str, what: str) -> None:
        namespace, _, short = name.partition("/")
        super().__init__("name", f"schedule {name!r} is owned by a Schedule resource; {what} it there",
                         f"kubectl -n {namespace} edit schedules.kubetasks.dev {short} (or change its manifest "
                         "in Git)")


def _owned(conn: Conn, name: str) -> dict[str, Any]:
    return schedules.get(conn, name)


def pause_schedule(conn: Conn, name: str) -> dict[str, Any]:
    if _owned(conn, name)["source"] == "operator":
        raise OwnedByResource(name, "set spec.suspend: true on")
    return schedule_json(schedules.pause(conn, name))


def resume_schedule(conn: Conn, name: str) -> dict[str, Any]:
    if _owned(conn, name)["source"] == "operator":
        raise OwnedByResource(name, "set spec.suspend: false on")
    return schedule_json(schedules.resume(conn, name))


def trigger_schedule(conn: Conn, name: str) -> dict[str, Any]:
    task = schedules.trigger(conn, name)
    return {"task": task_json(task), "created": task.created}


def edit_schedule(conn: Conn, name: str, *, cron: str | None, time_zone: str | None) -> dict[str, Any]:
    row = schedules.get(conn, name)
    if row["source"] == "operator":
        raise OwnedByResource(name, "edit spec.schedule / spec.timeZone of")
    if cron is None and time_zone is None:
        raise InvalidInput("cron", "nothing to change", "pass cron, time_zone or both")
    data = schedules.spec_of(row).model_dump(by_alias=True)
    data.update({k: v for k, v in (("schedule", cron), ("timeZone", time_zone)) if v is not None})
    if cron is not None:
        data["every"] = None  # a cron given replaces an interval
    spec = _parse_spec(data)
    return schedule_json(schedules.apply(conn, name, spec, source=row["source"], validate_actor=False))


_SPEC_FIELDS = {"spec.schedule": "cron", "spec.timeZone": "time_zone", "spec.queue": "queue", "spec.args": "args"}


def _parse_spec(data: dict[str, Any]) -> ScheduleSpec:
    """A spec, its errors named as the API's fields (cron, time_zone), with a check that it fires at all."""
    try:
        spec = manifests.parse_spec(data)
    except InvalidInput as exc:
        raise InvalidInput(_SPEC_FIELDS.get(exc.field, exc.field), exc.problem, exc.fix) from None
    start, end = spec.times
    if cron.next_tick(spec.expression, spec.time_zone, datetime.now(UTC), start, end) is None:
        raise InvalidInput("cron", f"{spec.expression!r} never fires again", "pick a time that will come")
    return spec


def create_schedule(conn: Conn, name: str, actor: str, args: dict[str, Any], cron: str, time_zone: str = "UTC",
                    queue_name: str | None = None) -> dict[str, Any]:
    manifests.check_schedule_name(name)
    declared = registry.get(registry.validate_name(actor))
    checked = validate_args(declared, args)
    spec = _parse_spec({"actor": declared.name, "args": checked, "schedule": cron, "timeZone": time_zone,
                        "queue": queue_name or declared.queue})
    existing = conn.execute("SELECT 1 FROM kubetasks.schedules WHERE name = %s", (name,)).fetchone()
    if existing is not None:
        raise InvalidInput("name", f"schedule {name!r} already exists", "pick another name, or edit that one")
    return schedule_json(schedules.apply(conn, name, spec, source="dashboard"))
