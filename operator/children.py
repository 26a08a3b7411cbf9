"""The TaskRuns a Schedule owns: what each looks like and which ones should exist. Pure, no I/O.

A run fired by a Schedule (by its cron or a trigger) is a task row first; the operator then shows it as a
TaskRun named "<schedule>-<task id>", owned by the Schedule (so deleting the Schedule garbage-collects
them), labelled `kubetasks.dev/schedule` and `kubetasks.dev/task-id`. The spec is copied from the row so
`kubectl get tr -o yaml` says what ran; the TaskRun handler sees the task-id label and adopts the row
instead of enqueuing a second task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import resources


def child_name(schedule: str, task_id: int) -> str:
    """A scheduled run's TaskRun name: deterministic, so every replica and retry agrees on it."""
    return f"{schedule}-{task_id}"


def owner_reference(schedule: Mapping[str, Any]) -> dict[str, Any]:
    meta = schedule["metadata"]
    return {"apiVersion": resources.API_VERSION, "kind": resources.SCHEDULE.kind, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def taskrun_body(schedule: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """The TaskRun showing one run of `schedule` (a Schedule object) whose row is `task`."""
    meta = schedule["metadata"]
    spec: dict[str, Any] = {"actor": task["actor"], "args": task.get("args") or {}, "queue": task["queue"],
                            "priority": task.get("priority") or 0,
                            "retries": {"limit": task["max_retries"]}}
    if task.get("time_limit"):
        spec["timeLimitSeconds"] = task["time_limit"]
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.TASKRUN.kind,
        "metadata": {
            "name": child_name(meta["name"], task["id"]),
            "namespace": meta["namespace"],
            "labels": {resources.SCHEDULE_LABEL: meta["name"], resources.TASK_ID_LABEL: str(task["id"])},
            "ownerReferences": [owner_reference(schedule)],
        },
        "spec": spec,
    }


def adopted_task_id(body: Mapping[str, Any]) -> int | None:
    """The task id a TaskRun mirrors when a Schedule created it, else None (then it is a hand-made one).

    Both the label and a controlling Schedule owner are required, so a hand-made TaskRun cannot point
    itself at somebody else's task by copying a label; the caller still checks that the row belongs to
    that Schedule.
    """
    meta = body.get("metadata") or {}
    label = (meta.get("labels") or {}).get(resources.TASK_ID_LABEL)
    owner = schedule_owner(body)
    if label is None or owner is None or not label.isdigit():
        return None
    return int(label)


def schedule_owner(body: Mapping[str, Any]) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == resources.SCHEDULE.kind and ref.get("apiVersion", "").startswith(
                resources.GROUP + "/") and ref.get("controller"):
            return str(ref["name"])
    return None


@dataclass(frozen=True)
class Plan:
    create: list[int]  # task ids whose TaskRun is missing
    delete: list[str]  # TaskRun names no longer wanted (finished and past the history limits, or purged)


def plan(existing: Mapping[str, int | None], kept: Iterable[int], schedule: str) -> Plan:
    """Compare the Schedule's TaskRuns (name -> task id label) with the runs it should show.

    Only TaskRuns named like the Schedule's own children are deleted, so a TaskRun someone labelled by
    hand is left alone.
    """
    wanted = set(kept)
    have = {task_id for task_id in existing.values() if task_id is not None}
    delete = sorted(name for name, task_id in existing.items()
                    if task_id is not None and task_id not in wanted
                    and name == child_name(schedule, task_id))
    return Plan(create=sorted(wanted - have), delete=delete)
