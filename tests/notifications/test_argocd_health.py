"""The Argo CD health checks of charts/kubetasks/files/argocd-health.yaml, run with a real Lua (lupa) against
statuses made by the operator's own status functions (operator/status.py), plus the states before any status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from kubetasks.operator import status

SNIPPET = Path(__file__).resolve().parents[2] / "charts" / "kubetasks" / "files" / "argocd-health.yaml"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the check the way Argo CD does: the script is a chunk with `obj` global, returning a table."""
    script = yaml.safe_load(SNIPPET.read_text())[f"resource.customizations.health.kubetasks.dev_{kind}"]
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return str(result["status"]), str(result["message"])


def task(state: str, reason: str, **extra: Any) -> status.TaskView:
    fields: dict[str, Any] = {"id": 7, "state": state, "reason": reason, "attempts": 1, "max_retries": 2,
                              "eta": NOW, "worker": None, "error": None, "started_at": NOW - timedelta(seconds=3),
                              "finished_at": None, "updated_at": NOW}
    return status.TaskView(**(fields | extra))


def flow(state: str) -> status.WorkflowView:
    return status.WorkflowView(id=9, state=state, reason="Step:pages", steps=(
        {"name": "pages", "state": "running", "done": 2, "total": 5, "succeeded": 2, "warned": 0, "failed": 0,
         "cancelled": 0},))


def view(**extra: Any) -> status.ScheduleView:
    return status.ScheduleView(**({"paused": False, "next_run": NOW + timedelta(hours=1), "last_run": NOW,
                                   "last_success": NOW, "active": 0, "last_state": "successful"} | extra))


def schedule(st: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "nightly", "generation": generation}, **({"status": st} if st else {})}


@pytest.mark.parametrize(("obj", "expected"), [
    (schedule(None), "Progressing"),
    (schedule(status.schedule_status(view(), NOW, generation=1)), "Healthy"),
    (schedule(status.schedule_status(view(), NOW, generation=1), generation=2), "Progressing"),
    (schedule(status.schedule_status(view(paused=True), NOW, generation=1)), "Suspended"),
    (schedule(status.schedule_status(view(last_state="error", last_failed_reason="Failed",
                                          last_failed_message="boom"), NOW, generation=1)), "Degraded"),
    (schedule(status.schedule_status(None, NOW, generation=1, invalid=("InvalidSchedule", "spec.schedule: bad"))),
     "Degraded"),
])
def test_schedule_health(obj: dict[str, Any], expected: str) -> None:
    assert health("Schedule", obj)[0] == expected


@pytest.mark.parametrize(("view_", "expected", "words"), [
    (None, "Progressing", "operator"),
    (task("queued", "Queued", attempts=0, started_at=None), "Progressing", "waits for a worker"),
    (task("running", "Running", worker="w-1"), "Progressing", "Attempt 1 of 3 running on w-1"),
    (task("running", "Retrying", error="boom"), "Progressing", "retrying"),
    (task("successful", "Succeeded", finished_at=NOW), "Healthy", "Succeeded after 1 attempt"),
    (task("warning", "SucceededWithWarnings", finished_at=NOW, error="disk"), "Healthy", "disk"),
    (task("error", "Failed", finished_at=NOW, attempts=3, error="boom"), "Degraded", "Failed: boom"),
    (task("error", "TimedOut", finished_at=NOW, error="time limit"), "Degraded", "TimedOut"),
    (task("cancelled", "Cancelled", finished_at=NOW, error="by hand"), "Degraded", "Cancelled: by hand"),
    # The task started a workflow and returned: the workflow decides.
    (task("successful", "Succeeded", finished_at=NOW, workflow=flow("running")), "Progressing",
     "Workflow 9 running: 2/5 children done"),
    (task("successful", "Succeeded", finished_at=NOW, workflow=flow("successful")), "Healthy", "Succeeded"),
    (task("successful", "Succeeded", finished_at=NOW, workflow=flow("error")), "Degraded",
     "Workflow 9 error: 2/5 children done"),
])
def test_taskrun_health(view_: status.TaskView | None, expected: str, words: str) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "run"}}
    if view_ is not None:
        obj["status"] = status.taskrun_status(view_, NOW)
    state, message = health("TaskRun", obj)
    assert (state, words in message) == (expected, True), message


def pool(ready: str | None, desired: int = 2, current: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "workers"}}
    if ready is not None:
        cond = status.condition("Ready", ready, "Steady" if ready == "True" else "TargetNotFound",
                                "2 replica(s) recommended" if ready == "True" else "Deployment w does not exist",
                                NOW, ())
        obj["status"] = {"desired": desired, "current": current, "conditions": [cond]}
    return obj


@pytest.mark.parametrize(("obj", "expected"), [
    (pool(None), "Progressing"), (pool("True"), "Healthy"), (pool("True", desired=3, current=2), "Progressing"),
    (pool("False"), "Degraded"),
])
def test_workerpool_health(obj: dict[str, Any], expected: str) -> None:
    assert health("WorkerPool", obj)[0] == expected
