"""Status and conditions computed from database rows: pure functions, no I/O.

A TaskRun's `Succeeded` condition follows Tekton: Unknown while the task is queued or running, True when it
succeeded, False when it failed or was cancelled; the reason is the task row's `reason` column (Queued,
Running, Retrying, Succeeded, SucceededWithWarnings, Failed, TimedOut, Cancelled, WorkerLost), checked
against the state so that an unexpected value never contradicts it. A Schedule gets Ready, Suspended and
LastRunFailed.

`lastTransitionTime` only moves when a condition's status changes, as Kubernetes API conventions ask; the
previous conditions are passed in for that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetasks.worker import protocol

from . import resources

SUCCEEDED = "Succeeded"
READY = "Ready"
SUSPENDED = "Suspended"
LAST_RUN_FAILED = "LastRunFailed"

# Reasons that may accompany each state; the first one is the default when the row says something else.
_REASONS: dict[str, tuple[str, ...]] = {
    "queued": ("Queued",),
    "running": ("Running", "Retrying", "WorkerLost"),
    "successful": ("Succeeded",),
    "warning": ("SucceededWithWarnings",),
    "error": ("Failed", "TimedOut", "WorkerLost"),
    "cancelled": ("Cancelled",),
}
_STATUS = {"queued": "Unknown", "running": "Unknown", "successful": "True", "warning": "True",
           "error": "False", "cancelled": "False"}
# Event type per reason: what an operator on call wants to see in `kubectl get events --field-selector
# type=Warning`.
WARNING_REASONS = frozenset({"Retrying", "WorkerLost", "Failed", "TimedOut", "SucceededWithWarnings"})

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 4096
MESSAGE_BYTES = 2048


def reason_of(state: str, reason: str | None) -> str:
    allowed = _REASONS.get(state, ("Unknown",))
    return reason if reason in allowed else allowed[0]


def condition(type_: str, status: str, reason: str, message: str, now: datetime,
              previous: Sequence[Mapping[str, Any]] = (), generation: int | None = None) -> dict[str, Any]:
    """One condition dict; keeps the previous lastTransitionTime when the status did not change."""
    before = next((c for c in previous if c.get("type") == type_), None)
    since: Any = now
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        since = before["lastTransitionTime"]
    return resources.Condition(type=type_, status=status, reason=reason, message=_clip(message, MESSAGE_BYTES),
                               last_transition_time=since, observed_generation=generation).dump()


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether the status patch `new` says anything `old` does not: the test before every status write.

    Condition timestamps need no special case: `condition` keeps them unless the status moved."""
    return any(old.get(key) != value for key, value in new.items())


def condition_changed(old: Mapping[str, Any], new: Mapping[str, Any], type_: str) -> bool:
    """Whether the `type_` condition's status, reason or message differ between two statuses."""

    def pick(s: Mapping[str, Any]) -> tuple[Any, ...]:
        found: Mapping[str, Any] = next((c for c in s.get("conditions") or () if c.get("type") == type_), {})
        return (found.get("status"), found.get("reason"), found.get("message"))

    return pick(old) != pick(new)


def _clip(text: str, limit: int, keep_end: bool = False) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    if keep_end:
        return "…" + data[-limit:].decode(errors="ignore")
    return data[:limit].decode(errors="ignore") + "…"


def human_duration(seconds: float) -> str:
    """Go-style short duration, as kubectl prints them: 850ms, 12s, 3m4s, 2h5m, 3d4h."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s".replace(".0s", "s") if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def log_tail(log: str | None, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_BYTES) -> str | None:
    if not log:
        return None
    tail = "\n".join(log.rstrip("\n").splitlines()[-lines:])
    return _clip(tail, limit, keep_end=True)


@dataclass(frozen=True)
class WorkflowView:
    """The workflow a task is or started: its parent's id, state and reason, and `workflow_progress()`'s
    steps ([{"name", "state", "total", "done", "succeeded", "warned", "failed", "cancelled"}])."""

    id: int
    state: str
    reason: str | None
    steps: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WorkflowView | None:
        if row.get("workflow_id") is None:
            return None
        return cls(id=row["workflow_id"], state=row["workflow_state"], reason=row.get("workflow_reason"),
                   steps=tuple(row.get("workflow_steps") or ()))

    def progress(self) -> str:
        """'23/25': children done over children known so far, all steps."""
        return f"{sum(s['done'] for s in self.steps)}/{sum(s['total'] for s in self.steps)}"

    def summary(self) -> str:
        """'users 21/21, groups 3/4 (1 failed), memberships 0/0', like `kubetasks tasks show`."""
        def one(step: Mapping[str, Any]) -> str:
            bad = [f"{step[k]} {k}" for k in ("failed", "cancelled", "warned") if step.get(k)]
            return f"{step['name']} {step['done']}/{step['total']}" + (f" ({', '.join(bad)})" if bad else "")
        return ", ".join(one(step) for step in self.steps)

    def status(self) -> resources.WorkflowProgress:
        found: dict[str, Any] = {"task_id": self.id, "state": self.state, "steps": list(self.steps)}
        if self.reason is not None:  # a null inside a merge patch deletes the key: the next compare would differ
            found["reason"] = self.reason
        return resources.WorkflowProgress.model_validate(found)


@dataclass(frozen=True)
class TaskView:
    """The columns of a task row (plus its latest attempt's log and its workflow's progress) that a TaskRun's
    status shows."""

    id: int
    state: str
    reason: str
    attempts: int
    max_retries: int
    eta: datetime
    worker: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    log: str | None = None
    actor: str | None = None
    workflow: WorkflowView | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskView:
        return cls(id=row["id"], state=row["state"], reason=row["reason"], attempts=row["attempts"],
                   max_retries=row["max_retries"], eta=row["eta"], worker=row.get("worker"),
                   error=row.get("error"), started_at=row.get("started_at"), finished_at=row.get("finished_at"),
                   updated_at=row["updated_at"], log=row.get("log"), actor=row.get("actor"),
                   workflow=WorkflowView.from_row(row))


def task_message(task: TaskView, reason: str, now: datetime) -> str:
    if task.actor == protocol.WORKFLOW_ACTOR and task.state == "running" and task.workflow is not None:
        # A parent never runs on a worker: no attempt to speak of, only its steps.
        return f"Workflow running: {task.workflow.summary()}"
    max_attempts = task.max_retries + 1
    if task.state == "queued":
        if task.eta > now:
            return f"Task {task.id} waits until {resources.rfc3339(task.eta)}"
        return f"Task {task.id} waits for a worker"
    if task.state == "running" and task.worker is not None:
        return f"Attempt {task.attempts} of {max_attempts} running on {task.worker}"
    if task.state == "running":
        why = f": {task.error}" if task.error else ""
        return f"Attempt {task.attempts} of {max_attempts} failed{why}; retrying at {resources.rfc3339(task.eta)}"
    if task.state in ("successful", "warning"):
        return f"Succeeded after {task.attempts} attempt{'s' if task.attempts != 1 else ''}" + (
            f": {task.error}" if task.state == "warning" and task.error else "")
    if task.state == "cancelled":
        return task.error or "Cancelled"
    return task.error or reason


def taskrun_status(task: TaskView, now: datetime, previous: Mapping[str, Any] | None = None,
                   generation: int | None = None) -> dict[str, Any]:
    """The `.status` of a TaskRun mirroring `task` (every key present, so a merge patch clears stale ones)."""
    previous = previous or {}
    reason = reason_of(task.state, task.reason)
    message = task_message(task, reason, now)
    succeeded = condition(SUCCEEDED, _STATUS.get(task.state, "Unknown"), reason, message, now,
                          previous.get("conditions") or ())
    duration = None
    if task.started_at is not None:
        end = task.finished_at or (now if task.state not in protocol.FINAL_STATES else task.updated_at)
        duration = human_duration(max(0.0, (end - task.started_at).total_seconds()))
    return resources.TaskRunStatus(
        state=task.state, conditions=[succeeded], attempt=task.attempts, max_attempts=task.max_retries + 1,
        start_time=task.started_at, completion_time=task.finished_at, duration=duration,
        message=_clip(message, MESSAGE_BYTES), task_id=task.id, log_tail=log_tail(task.log),
        workflow=task.workflow.status() if task.workflow is not None else None,
        progress=task.workflow.progress() if task.workflow is not None else None,
        observed_generation=generation if generation is not None else previous.get("observedGeneration"),
    ).patch()


def transition(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(event type, reason, message) when the Succeeded reason or the attempt changed, else None."""

    def key(status: Mapping[str, Any] | None) -> tuple[Any, Any]:
        if not status:
            return (None, None)
        cond: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == SUCCEEDED), {})
        return (cond.get("reason"), status.get("attempt"))

    before, after = key(previous), key(current)
    if before == after or after[0] is None:
        return None
    reason = str(after[0])
    cond = current["conditions"][0]
    return ("Warning" if reason in WARNING_REASONS else "Normal", reason, str(cond.get("message", "")))


def workflow_transition(previous: Mapping[str, Any] | None,
                        current: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(event type, reason, message) when the TaskRun's workflow reached a final state, else None."""
    before = ((previous or {}).get("workflow") or {}).get("state")
    after = (current.get("workflow") or {}).get("state")
    if after == before or after not in protocol.FINAL_STATES:
        return None
    reason = {"successful": "WorkflowSucceeded", "warning": "WorkflowSucceededWithWarnings",
              "error": "WorkflowFailed", "cancelled": "WorkflowCancelled"}[after]
    workflow = current["workflow"]
    message = f"Workflow {workflow['taskId']} {after} ({current.get('progress')} children done)"
    return ("Normal" if after == "successful" else "Warning", reason, message)


def invalid_reason(field: str) -> str:
    """`spec.timeZone` -> InvalidTimeZone: the reason names the field at fault."""
    leaf = field.split(" ")[-1].split(".")[-1].split("[")[0] or "Spec"
    return "Invalid" + leaf[:1].upper() + leaf[1:]


@dataclass(frozen=True)
class ScheduleView:
    """A schedule row and a summary of its runs: what a Schedule's status shows."""

    paused: bool
    next_run: datetime | None
    last_run: datetime | None
    last_success: datetime | None
    active: int
    last_state: str | None = None
    last_name: str | None = None
    last_failed_reason: str | None = None  # set when the newest *finished* run failed
    last_failed_message: str | None = None
    paused_reason: str | None = None  # set when the schedule paused itself after failed runs in a row


PAUSED_AFTER_FAILURES = "PausedAfterFailures"  # the Suspended condition's reason when failures paused it


def _suspended(view: ScheduleView, now: datetime, before: Any, generation: int | None) -> dict[str, Any]:
    if view.paused and view.paused_reason:
        return condition(SUSPENDED, "True", PAUSED_AFTER_FAILURES,
                         f"{view.paused_reason}; resume with `kubetasks schedules resume`", now, before, generation)
    return condition(SUSPENDED, "True" if view.paused else "False", "Suspended" if view.paused else "Active",
                     "spec.suspend is true: no new runs start" if view.paused else "New runs start on schedule",
                     now, before, generation)


def schedule_status(view: ScheduleView | None, now: datetime, previous: Mapping[str, Any] | None = None,
                    generation: int | None = None, invalid: tuple[str, str] | None = None) -> dict[str, Any]:
    """The `.status` of a Schedule; `invalid` is (reason, message) when the spec was refused."""
    previous = previous or {}
    before = previous.get("conditions") or ()
    if invalid is not None or view is None:
        reason, message = invalid or ("NotApplied", "The schedule is not stored yet")
        return resources.ScheduleStatus(
            conditions=[condition(READY, "False", reason, message, now, before, generation),
                        *[c for c in before if c.get("type") != READY]],
            next_schedule_time=None, observed_generation=generation,
        ).patch()
    conditions = [
        condition(READY, "True", "Scheduled", "Stored; the scheduler fires it on time", now, before,
                  generation),
        _suspended(view, now, before, generation),
    ]
    if view.last_failed_reason:
        conditions.append(condition(LAST_RUN_FAILED, "True", view.last_failed_reason,
                                    view.last_failed_message or view.last_failed_reason, now, before))
    else:
        conditions.append(condition(LAST_RUN_FAILED, "False", "LastRunSucceeded" if view.last_state else "NoRuns",
                                    "The most recent finished run did not fail" if view.last_state
                                    else "No run has finished yet", now, before))
    return resources.ScheduleStatus(
        conditions=conditions, last_schedule_time=view.last_run, last_successful_time=view.last_success,
        next_schedule_time=view.next_run if not view.paused else None, last_run_state=view.last_state,
        last_run_name=view.last_name, active=view.active, observed_generation=generation,
    ).patch()
