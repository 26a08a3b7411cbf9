"""Status patches come from the pydantic status models: every key they carry is a field of the CRD's status
schema (the apiserver would silently prune any other), and `status.changed` is the one test before a write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kubetasks.operator import resources, status

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _status_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"{plural}.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def _assert_known(patch: dict[str, Any], plural: str) -> None:
    schema = _status_schema(plural)
    assert set(patch) <= set(schema["properties"]), set(patch) - set(schema["properties"])
    condition_keys = set(schema["properties"]["conditions"]["items"]["properties"])
    for cond in patch.get("conditions") or ():
        assert set(cond) <= condition_keys, set(cond) - condition_keys


def test_taskrun_patches_carry_only_schema_fields() -> None:
    view = status.TaskView(id=3, state="running", reason="Running", attempts=1, max_retries=2, eta=NOW,
                           worker="w", error=None, started_at=NOW - timedelta(seconds=3), finished_at=None,
                           updated_at=NOW, log="x\n")
    _assert_known(status.taskrun_status(view, NOW, generation=2), "taskruns")
    refused = resources.TaskRunStatus(state=None, message="m", observed_generation=1).patch()
    assert refused == {"state": None, "message": "m", "observedGeneration": 1}  # None deletes, unset is left
    _assert_known(refused, "taskruns")


def test_schedule_patches_carry_only_schema_fields() -> None:
    view = status.ScheduleView(paused=False, next_run=NOW, last_run=NOW, last_success=None, active=1,
                               last_state="error", last_name="s-1", last_failed_reason="Failed")
    _assert_known(status.schedule_status(view, NOW, generation=1), "schedules")
    _assert_known(status.schedule_status(None, NOW, invalid=("InvalidTimeZone", "bad")), "schedules")
    assert resources.ScheduleStatus(last_trigger="v").patch() == {"lastTrigger": "v"}


def test_a_patch_never_touches_kopfs_bookkeeping() -> None:
    view = status.ScheduleView(paused=True, next_run=None, last_run=None, last_success=None, active=0)
    assert "kopf" not in status.schedule_status(view, NOW)


def test_changed_compares_what_the_patch_says() -> None:
    old = {"state": "queued", "attempt": 0, "kopf": {"progress": {}}}
    assert not status.changed(old, {"state": "queued", "startTime": None})  # None and absent agree
    assert status.changed(old, {"state": "running"})
    assert status.changed(old, {"attempt": 0, "duration": "1s"})
