"""Task rows -> TaskRun status and Schedule conditions: the mapping users read in `kubectl get`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetasks.operator import status

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def view(state: str, reason: str, **overrides: Any) -> status.TaskView:
    values: dict[str, Any] = {
        "id": 7, "state": state, "reason": reason, "attempts": 1, "max_retries": 3, "eta": NOW - timedelta(seconds=5),
        "worker": None, "error": None, "started_at": NOW - timedelta(seconds=65), "finished_at": None,
        "updated_at": NOW, "log": None}
    values.update(overrides)
    return status.TaskView(**values)


def succeeded(s: dict[str, Any]) -> dict[str, Any]:
    (cond,) = [c for c in s["conditions"] if c["type"] == "Succeeded"]
    return cond


@pytest.mark.parametrize(("state", "reason", "worker", "cond_status", "cond_reason"), [
    ("queued", "Queued", None, "Unknown", "Queued"),
    ("running", "Running", "w1", "Unknown", "Running"),
    ("running", "Retrying", None, "Unknown", "Retrying"),
    ("running", "WorkerLost", None, "Unknown", "WorkerLost"),
    ("successful", "Succeeded", None, "True", "Succeeded"),
    ("warning", "SucceededWithWarnings", None, "True", "SucceededWithWarnings"),
    ("error", "Failed", None, "False", "Failed"),
    ("error", "TimedOut", None, "False", "TimedOut"),
    ("error", "WorkerLost", None, "False", "WorkerLost"),
    ("cancelled", "Cancelled", None, "False", "Cancelled"),
    # A reason that contradicts the state is replaced by the state's own.
    ("successful", "Failed", None, "True", "Succeeded"),
    ("queued", "Running", None, "Unknown", "Queued"),
])
def test_succeeded_condition_follows_state_and_reason(state: str, reason: str, worker: str | None,
                                                      cond_status: str, cond_reason: str) -> None:
    finished = NOW if state not in ("queued", "running") else None
    s = status.taskrun_status(view(state, reason, worker=worker, finished_at=finished), NOW)
    assert s["state"] == state
    assert (succeeded(s)["status"], succeeded(s)["reason"]) == (cond_status, cond_reason)


def test_status_fields() -> None:
    row = view("error", "Failed", attempts=4, error="ValueError: boom", finished_at=NOW - timedelta(seconds=5),
               log="line 1\nline 2\n")
    s = status.taskrun_status(row, NOW, generation=3)
    assert s["attempt"] == 4 and s["maxAttempts"] == 4 and s["taskId"] == 7
    assert s["startTime"] == "2026-03-01T11:58:55Z" and s["completionTime"] == "2026-03-01T11:59:55Z"
    assert s["duration"] == "1m" and s["message"] == "ValueError: boom" and s["logTail"] == "line 1\nline 2"
    assert s["observedGeneration"] == 3
    queued = status.taskrun_status(view("queued", "Queued", started_at=None, attempts=0), NOW)
    # Every key is present (None deletes it in a merge patch), so a retried task loses its old completion.
    assert queued["completionTime"] is None and queued["duration"] is None and queued["startTime"] is None


def test_messages_say_what_is_going_on() -> None:
    later = view("queued", "Queued", eta=NOW + timedelta(hours=1), started_at=None, attempts=0)
    assert status.taskrun_status(later, NOW)["message"] == "Task 7 waits until 2026-03-01T13:00:00Z"
    running = view("running", "Running", worker="pod-a/1", attempts=2)
    assert status.taskrun_status(running, NOW)["message"] == "Attempt 2 of 4 running on pod-a/1"
    retrying = view("running", "Retrying", error="boom", eta=NOW + timedelta(seconds=4))
    assert status.taskrun_status(retrying, NOW)["message"] == (
        "Attempt 1 of 4 failed: boom; retrying at 2026-03-01T12:00:04Z")


def test_last_transition_time_moves_only_with_the_status() -> None:
    first = status.taskrun_status(view("queued", "Queued"), NOW - timedelta(minutes=5))
    running = status.taskrun_status(view("running", "Running", worker="w"), NOW, first)
    assert succeeded(running)["lastTransitionTime"] == succeeded(first)["lastTransitionTime"]  # Unknown both
    done = status.taskrun_status(view("successful", "Succeeded", finished_at=NOW), NOW, running)
    assert succeeded(done)["lastTransitionTime"] == "2026-03-01T12:00:00Z"


def test_transitions_make_events() -> None:
    queued = status.taskrun_status(view("queued", "Queued"), NOW)
    assert status.transition(None, queued) == ("Normal", "Queued", "Task 7 waits for a worker")
    assert status.transition(queued, queued) is None
    retry = status.taskrun_status(view("running", "Retrying", attempts=1, error="boom"), NOW, queued)
    assert status.transition(queued, retry)[:2] == ("Warning", "Retrying")  # type: ignore[index]
    again = status.taskrun_status(view("running", "Retrying", attempts=2, error="boom"), NOW, retry)
    assert status.transition(retry, again) is not None  # a new attempt is news even with the same reason
    failed = status.taskrun_status(view("error", "TimedOut", finished_at=NOW, attempts=2), NOW, again)
    assert status.transition(again, failed)[:2] == ("Warning", "TimedOut")  # type: ignore[index]


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250ms"), (3.5, "3.5s"), (3.0, "3s"), (42.7, "42s"), (60, "1m"), (185, "3m5s"), (7260, "2h1m"),
    (90000, "1d1h"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert status.human_duration(seconds) == text


def test_log_tail_keeps_the_last_lines_and_bytes() -> None:
    log = "\n".join(f"line {i}" for i in range(100))
    tail = status.log_tail(log)
    assert tail is not None and tail.splitlines()[0] == "line 80" and tail.endswith("line 99")
    huge = status.log_tail("x" * 10_000)
    assert huge is not None and len(huge.encode()) <= status.LOG_TAIL_BYTES + 3 and huge.startswith("…")
    assert status.log_tail("") is None


@pytest.mark.parametrize(("field", "reason"), [
    ("spec.schedule", "InvalidSchedule"), ("spec.timeZone", "InvalidTimeZone"), ("spec.actor", "InvalidActor"),
    ("spec.retries.limit", "InvalidLimit"), ("name", "InvalidName"), ("spec.args", "InvalidArgs"),
])
def test_invalid_reason_names_the_field(field: str, reason: str) -> None:
    assert status.invalid_reason(field) == reason


def _types(s: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in s["conditions"]}


def test_schedule_conditions() -> None:
    ok = status.ScheduleView(paused=False, next_run=NOW + timedelta(minutes=1), last_run=NOW, last_success=NOW,
                             active=1, last_state="running", last_name="nightly-9")
    s = status.schedule_status(ok, NOW, generation=2)
    assert _types(s) == {"Ready": ("True", "Scheduled"), "Suspended": ("False", "Active"),
                         "LastRunFailed": ("False", "LastRunSucceeded")}
    assert s["nextScheduleTime"] == "2026-03-01T12:01:00Z" and s["active"] == 1 and s["observedGeneration"] == 2
    paused = status.ScheduleView(paused=True, next_run=NOW, last_run=None, last_success=None, active=0,
                                 last_state="error", last_failed_reason="TimedOut", last_failed_message="too slow")
    s = status.schedule_status(paused, NOW)
    assert _types(s)["Suspended"] == ("True", "Suspended") and s["nextScheduleTime"] is None
    assert _types(s)["LastRunFailed"] == ("True", "TimedOut")


def test_a_schedule_paused_by_failures_says_why_in_suspended() -> None:
    view = status.ScheduleView(paused=True, next_run=NOW, last_run=NOW, last_success=None, active=0,
                               last_state="error", last_failed_reason="Failed", last_failed_message="boom",
                               paused_reason="3 failed runs in a row (pauseAfterFailures 3); the last, task 9: boom")
    s = status.schedule_status(view, NOW)
    suspended = next(c for c in s["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", status.PAUSED_AFTER_FAILURES)
    assert suspended["message"].startswith("3 failed runs in a row")
    assert "kubetasks schedules resume" in suspended["message"]
    before = status.schedule_status(status.ScheduleView(False, NOW, None, None, 0), NOW)
    assert status.condition_changed(before, s, status.SUSPENDED)  # what makes the operator post its Event


def test_refused_schedule_keeps_its_other_conditions() -> None:
    before = status.schedule_status(status.ScheduleView(False, NOW, None, None, 0), NOW)
    s = status.schedule_status(None, NOW, before, generation=4, invalid=("InvalidTimeZone", "spec.timeZone: bad"))
    assert _types(s)["Ready"] == ("False", "InvalidTimeZone")
    assert "Suspended" in _types(s) and s["nextScheduleTime"] is None


STEPS = ({"name": "users", "state": "done", "total": 21, "done": 21, "succeeded": 21, "warned": 0, "failed": 0,
          "cancelled": 0},
         {"name": "groups", "state": "running", "total": 4, "done": 2, "succeeded": 1, "warned": 0, "failed": 1,
          "cancelled": 0},
         {"name": "memberships", "state": "waiting", "total": 0, "done": 0, "succeeded": 0, "warned": 0,
          "failed": 0, "cancelled": 0})


def test_a_task_that_started_a_workflow_shows_its_steps_and_progress() -> None:
    flow = status.WorkflowView(id=9, state="running", reason="Step:groups", steps=STEPS)
    s = status.taskrun_status(view("successful", "Succeeded", finished_at=NOW, workflow=flow), NOW)
    assert s["progress"] == "23/25"
    assert s["workflow"] == {"taskId": 9, "state": "running", "reason": "Step:groups", "steps": [
        {"name": "users", "state": "done", "done": 21, "total": 21, "succeeded": 21, "warned": 0, "failed": 0,
         "cancelled": 0},
        {"name": "groups", "state": "running", "done": 2, "total": 4, "succeeded": 1, "warned": 0, "failed": 1,
         "cancelled": 0},
        {"name": "memberships", "state": "waiting", "done": 0, "total": 0, "succeeded": 0, "warned": 0,
         "failed": 0, "cancelled": 0}]}
    assert s["message"] == "Succeeded after 1 attempt"  # the task's own outcome; the workflow has its own


def test_a_plain_task_clears_workflow_fields() -> None:
    s = status.taskrun_status(view("running", "Running", worker="w1"), NOW)
    assert "workflow" in s and s["workflow"] is None and s["progress"] is None  # a merge patch deletes them


def test_a_workflow_parent_itself_says_which_steps_it_is_at() -> None:
    flow = status.WorkflowView(id=7, state="running", reason="Step:groups", steps=STEPS)
    s = status.taskrun_status(view("running", "Step:groups", attempts=0, max_retries=0, actor="kubetasks.workflow",
                                   workflow=flow), NOW)
    assert s["message"] == "Workflow running: users 21/21, groups 2/4 (1 failed), memberships 0/0"
    assert succeeded(s)["reason"] == "Running"


def test_workflow_rows_are_read_from_the_view_columns() -> None:
    row = {"id": 7, "state": "successful", "reason": "Succeeded", "attempts": 1, "max_retries": 3, "eta": NOW,
           "updated_at": NOW, "actor": "ldap.sync", "workflow_id": 9, "workflow_state": "running",
           "workflow_reason": "Step:users", "workflow_steps": list(STEPS)}
    task = status.TaskView.from_row(row)
    assert task.workflow == status.WorkflowView(id=9, state="running", reason="Step:users", steps=STEPS)
    assert status.TaskView.from_row({**row, "workflow_id": None}).workflow is None


def test_an_event_when_the_workflow_ends() -> None:
    running = {"workflow": {"taskId": 9, "state": "running"}, "progress": "3/25"}
    failed = {"workflow": {"taskId": 9, "state": "error"}, "progress": "25/25"}
    assert status.workflow_transition(running, failed) == (
        "Warning", "WorkflowFailed", "Workflow 9 error (25/25 children done)")
    assert status.workflow_transition(failed, failed) is None
    assert status.workflow_transition({}, running) is None
    assert status.workflow_transition(running, {**failed, "workflow": {"taskId": 9, "state": "successful"}})[:2] == (
        "Normal", "WorkflowSucceeded")
