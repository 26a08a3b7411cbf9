"""The custom resources' shapes: pydantic models that generate the CRDs (like kubebuilder's API types).

Schedule's spec is `kubetasks.worker.manifests.ScheduleSpec`, shared with `kubetasks apply -f`, so a
manifest file and a custom resource can never disagree. Everything else the operator owns lives here:
the Schedule status, TaskRun and WorkerPool spec and status, and the per-kind CRD facts (names, printer
columns, CEL rules) that `crds/generate.py` turns into YAML. Field descriptions are what `kubectl explain` shows.

Status models double as the operator's output format: `patch()` gives the dict merged onto `.status`, so a
misspelt field is a type error (mypy's pydantic plugin) instead of a key the apiserver silently prunes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from kubetasks.worker import manifests, notifyrules, protocol
from kubetasks.worker.protocol import TaskState

GROUP = manifests.GROUP
VERSION = manifests.VERSION
API_VERSION = f"{GROUP}/{VERSION}"

# Labels and annotations the operator reads or writes.
SCHEDULE_LABEL = f"{GROUP}/schedule"  # on TaskRuns fired by a Schedule: the Schedule's name
TASK_ID_LABEL = f"{GROUP}/task-id"  # on those TaskRuns: the id of the task row they mirror
TRIGGER_ANNOTATION = f"{GROUP}/trigger"  # on a Schedule: any new value fires one run now
BACKFILL_ANNOTATION = f"{GROUP}/backfill"  # on a Schedule: a new '<from>/<to>' runs each tick in it once
# On a WorkerPool: hold the target at this many replicas, autoscaling off (KEDA's paused-replicas).
PAUSED_REPLICAS_ANNOTATION = f"{GROUP}/paused-replicas"

ConditionStatus = Literal["True", "False", "Unknown"]


def rfc3339(value: datetime) -> str:
    """Kubernetes' timestamp spelling: UTC, whole seconds, 'Z' (what kubectl's `date` columns parse)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A datetime written the Kubernetes way; the schema says string/date-time.
KubeTime = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]

_KOPF = Field(
    default=None,
    description="Operator bookkeeping (Kopf's handler progress); not an interface.",
    json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        """The JSON-ready, camelCase dict of the fields that have a value (a condition, a sparse object)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def patch(self) -> dict[str, Any]:
        """The JSON merge patch of this status: exactly the fields given, camelCase, JSON-ready; a field given
        as None deletes the key it names, a field not given (`kopf`, say) leaves the stored one alone."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Condition(_Model):
    """A Kubernetes-style condition (metav1.Condition shape)."""

    type: str = Field(description="Kind of condition, e.g. Ready or Succeeded.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase why of the status.", max_length=1024)
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: KubeTime | None = Field(
        default=None, description="When status last changed (not when reason or message did).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from.")


_CONDITIONS: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


# -- Schedule ---------------------------------------------------------------------------------------------


class ScheduleStatus(_Model):
    """What the operator and the scheduler observed of a Schedule."""

    conditions: list[Condition] | None = Field(
        default=None, description="Ready (spec valid and stored), Suspended, LastRunFailed.",
        json_schema_extra=_CONDITIONS)
    last_schedule_time: KubeTime | None = Field(default=None, description="When a run was last started.")
    last_successful_time: KubeTime | None = Field(default=None, description="When a run last succeeded.")
    next_schedule_time: KubeTime | None = Field(
        default=None, description="When the next run is due (unset while suspended or invalid).")
    last_run_state: TaskState | None = Field(default=None, description="State of the most recent run.")
    last_run_name: str | None = Field(default=None, description="TaskRun of the most recent run.")
    active: int | None = Field(default=None, ge=0, description="Runs queued or running now.")
    last_trigger: str | None = Field(
        default=None, description=f"Value of the {TRIGGER_ANNOTATION} annotation last acted on.")
    last_backfill: str | None = Field(
        default=None, description=f"Value of the {BACKFILL_ANNOTATION} annotation last acted on.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation last stored in the database.")
    kopf: dict[str, Any] | None = _KOPF


# -- TaskRun ----------------------------------------------------------------------------------------------


class TaskRunSpec(_Model):
    """One execution of an actor; immutable once created except for `cancel`."""

    actor: str = Field(
        description="Name of the actor to run, as declared with @actor (e.g. 'kubetasks.http').",
        json_schema_extra={"pattern": protocol.ACTOR_PATTERN, "maxLength": 256})
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the actor, as a JSON object.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    queue: str = Field(
        default="default", description="Queue the task is put on; only workers consuming it run it.",
        json_schema_extra={"pattern": protocol.QUEUE_PATTERN, "maxLength": 128})
    run_at: KubeTime | None = Field(
        default=None, description="Earliest start (RFC 3339); unset means as soon as a worker is free.")
    time_limit_seconds: float | None = Field(
        default=None, gt=0, description="Seconds one attempt may run before it is stopped; unset uses the "
                                        "actor's or the worker's default.")
    retries: manifests.RetryPolicy = Field(
        default_factory=manifests.RetryPolicy, description="How a failed attempt is retried.")
    priority: int = Field(default=0, ge=-32768, le=32767,
                          description="Priority within the queue; higher runs first.")
    cancel: bool = Field(
        default=False, description="Set to true to cancel the run (a running attempt is told to stop); "
                                   "cannot be set back to false.")
    notifications: list[notifyrules.NotificationRule] = Field(
        default_factory=list, max_length=20,
        description="Who hears about the outcome: each rule names events (succeeded, warning, failed, "
                    "retriesExhausted, cancelled) and one target (email or webhook).")


class WorkflowStep(_Model):
    """One step of a workflow and the counts of its children (what `kubetasks tasks show` prints)."""

    name: str = Field(description="Name of the step.", max_length=128)
    state: Literal["waiting", "running", "done"] = Field(
        description="waiting (an earlier step is not done), running, or done (every child is final).")
    done: int = Field(ge=0, description="Children in a final state.")
    total: int = Field(ge=0, description="Children so far (a running child may still spawn more).")
    succeeded: int = Field(default=0, ge=0, description="Children that succeeded.")
    warned: int = Field(default=0, ge=0, description="Children that succeeded with a warning.")
    failed: int = Field(default=0, ge=0, description="Children that failed.")
    cancelled: int = Field(default=0, ge=0, description="Children that were cancelled.")


class WorkflowProgress(_Model):
    """The workflow a TaskRun's task is, or started: its parent task and its steps. Its children are rows in
    the database only, never custom resources."""

    task_id: int = Field(ge=1, description="Id of the workflow's parent task (kubetasks tasks show ID).")
    state: TaskState = Field(description="State of the workflow.")
    reason: str | None = Field(default=None, description="Current step (Step:<name>) or why it ended.",
                               max_length=1024)
    steps: list[WorkflowStep] = Field(default_factory=list, max_length=1000, description="Steps, in order.")


class TaskRunStatus(_Model):
    """The task's progress, mirrored from the database."""

    state: TaskState | None = Field(default=None, description="State of the task row.")
    conditions: list[Condition] | None = Field(
        default=None, description="Succeeded: Unknown while queued or running, then True or False; the "
                                  "reason says why (Queued, Running, Retrying, Succeeded, "
                                  "SucceededWithWarnings, Failed, TimedOut, Cancelled, WorkerLost).",
        json_schema_extra=_CONDITIONS)
    attempt: int | None = Field(default=None, ge=0, description="Attempts started so far.")
    max_attempts: int | None = Field(default=None, ge=1, description="First attempt plus retries.")
    start_time: KubeTime | None = Field(default=None, description="When the first attempt started.")
    completion_time: KubeTime | None = Field(default=None, description="When the task finished.")
    duration: str | None = Field(default=None, description="Time from start to completion (or until now).")
    message: str | None = Field(default=None, description="Error of the last attempt, or progress.")
    task_id: int | None = Field(default=None, ge=1, description="Id of the task row in the database.")
    log_tail: str | None = Field(
        default=None, description="Last lines of the latest attempt's log (stored when an attempt ends).")
    workflow: WorkflowProgress | None = Field(
        default=None, description="Set when the task is a workflow or started one: its step progress.")
    progress: str | None = Field(
        default=None, description="Children of the workflow done / known so far, e.g. 23/25.", max_length=64)
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation handled.")
    kopf: dict[str, Any] | None = _KOPF


# -- WorkerPool -------------------------------------------------------------------------------------------


class ScaleTargetRef(_Model):
    """The Deployment whose replicas are scaled."""

    api_version: Literal["apps/v1"] = Field(default="apps/v1", description="API version of the target.")
    kind: Literal["Deployment"] = Field(default="Deployment", description="Kind of the target.")
    name: str = Field(description="Name of the Deployment, in the WorkerPool's namespace.",
                      min_length=1, max_length=253)
    container: str | None = Field(
        default=None, description="Container whose KUBETASKS_WORKER__PROCESSES and __THREADS give the "
                                  "concurrency per replica; unset means the first container.")


class WorkerPoolSpec(_Model):
    """Autoscale a worker Deployment from the depth of the queues it consumes."""

    scale_target_ref: ScaleTargetRef = Field(description="The worker Deployment to scale.")
    queues: list[str] = Field(
        default=["default"], min_length=1, max_length=64,
        description="Queues the workers consume; their runnable and running tasks drive the scale.",
        json_schema_extra={"items": {"type": "string", "pattern": protocol.QUEUE_PATTERN, "maxLength": 128}})
    min_replicas: int = Field(
        default=1, ge=0, le=10000,
        description="Fewest replicas; 0 scales to zero when idle and back up when a task is runnable.")
    max_replicas: int = Field(default=10, ge=1, le=10000, description="Most replicas.")
    concurrency_per_replica: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="Tasks one replica runs at once; unset reads PROCESSES x THREADS from the target "
                    "container's KUBETASKS_WORKER__PROCESSES (default 1) and __THREADS (default 4).")
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=86400,
        description="Scale down only to the highest replica count wanted during this many seconds; "
                    "scaling up is immediate.")
    polling_interval_seconds: int = Field(
        default=10, ge=1, le=3600,
        description="How often the queues are measured; new tasks also wake the autoscaler at once.")


class WorkerPoolStatus(_Model):
    """What the autoscaler measured and decided."""

    desired: int | None = Field(default=None, ge=0, description="Replicas the autoscaler wants.")
    current: int | None = Field(default=None, ge=0, description="Replicas of the target's scale.")
    queued: int | None = Field(default=None, ge=0, description="Runnable tasks waiting in the queues that may "
                                                                "start now (counted in the scale).")
    held: int | None = Field(default=None, ge=0, description="Runnable tasks a queue's pause or limits hold "
                                                             "back (not counted in the scale).")
    paused_replicas: int | None = Field(
        default=None, ge=0, description=f"Replicas held by the {PAUSED_REPLICAS_ANNOTATION} annotation while "
                                        "autoscaling is paused; absent otherwise.")
    running: int | None = Field(default=None, ge=0, description="Tasks being executed.")
    concurrency: int | None = Field(default=None, ge=1, description="Tasks per replica used in the maths.")
    last_scale_time: KubeTime | None = Field(default=None, description="When the target was last scaled.")
    conditions: list[Condition] | None = Field(
        default=None, description="Ready (target found and scalable; reason Paused while paused-replicas holds "
                                  "it), Active (there is work).",
        json_schema_extra=_CONDITIONS)
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation handled.")
    kopf: dict[str, Any] | None = _KOPF


# -- CRD facts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """An additionalPrinterColumns entry."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str | None = None


@dataclass(frozen=True)
class Rule:
    """A CEL x-kubernetes-validations rule; `path` is where in the schema it sits ('' = root)."""

    path: str
    rule: str
    message: str
    field_path: str | None = None


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...] = field(default=())

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = Column("Age", "date", ".metadata.creationTimestamp")

SCHEDULE = Kind(
    kind="Schedule", plural="schedules", singular="schedule", short_names=("ktsched",),
    description="Recurring work: runs an actor on a cron schedule; each run appears as a TaskRun.",
    spec=manifests.ScheduleSpec, status=ScheduleStatus,
    columns=(
        Column("Schedule", "string", ".spec.schedule", "Cron expression."),
        Column("TimeZone", "string", ".spec.timeZone", "Time zone of the cron expression."),
        Column("Suspend", "boolean", ".spec.suspend", "Whether new runs are held back."),
        Column("Active", "integer", ".status.active", "Runs queued or running."),
        Column("Last Schedule", "date", ".status.lastScheduleTime", "When a run last started."),
        Column("Last Success", "date", ".status.lastSuccessfulTime", "When a run last succeeded."),
        # A string: kubectl prints future `date` values as <invalid>.
        Column("Next", "string", ".status.nextScheduleTime", "When the next run is due."),
        _AGE,
    ),
    rules=(
        # Like CronJob's 52: '-<task id>' is appended for TaskRun names, and the name is a label value.
        Rule("", "size(self.metadata.name) <= 52", "a Schedule's name must be at most 52 characters"),
        Rule("spec", "has(self.schedule) != has(self.every)",
             "give exactly one of spec.schedule (cron) and spec.every (an interval)"),
        Rule("spec", "self.missedRunPolicy != 'CatchUp' || has(self.catchupWindow)",
             "missedRunPolicy CatchUp needs spec.catchupWindow", field_path=".catchupWindow"),
    ),
)

TASKRUN = Kind(
    kind="TaskRun", plural="taskruns", singular="taskrun", short_names=("tr",),
    description="One execution of an actor, created by hand or fired by a Schedule.",
    spec=TaskRunSpec, status=TaskRunStatus,
    columns=(
        Column("Actor", "string", ".spec.actor", "Actor run."),
        Column("State", "string", ".status.state", "State of the task."),
        Column("Attempt", "integer", ".status.attempt", "Attempts started."),
        Column("Started", "date", ".status.startTime", "When the first attempt started."),
        Column("Duration", "string", ".status.duration", "Time from start to completion."),
        Column("Progress", "string", ".status.progress", "Workflow children done / known so far."),
        _AGE,
        Column("Workflow", "string", ".status.workflow.state", "State of the workflow it is or started.",
               priority=1),
        Column("Queue", "string", ".spec.queue", "Queue of the task.", priority=1),
        Column("Schedule", "string", ".metadata.labels.kubetasks\\.dev/schedule", "Schedule that fired it.",
               priority=1),
        Column("Message", "string", ".status.message", "Error or progress.", priority=1),
    ),
    rules=(
        Rule("spec", "self.actor == oldSelf.actor && self.queue == oldSelf.queue",
             "actor and queue are immutable; create a new TaskRun instead"),
        Rule("spec", "!oldSelf.cancel || self.cancel", "a cancelled TaskRun cannot be un-cancelled",
             ".cancel"),
    ),
)

WORKERPOOL = Kind(
    kind="WorkerPool", plural="workerpools", singular="workerpool", short_names=("wp",),
    description="Autoscales a worker Deployment from the depth of its queues.",
    spec=WorkerPoolSpec, status=WorkerPoolStatus,
    columns=(
        Column("Target", "string", ".spec.scaleTargetRef.name", "Deployment scaled."),
        Column("Min", "integer", ".spec.minReplicas", "Fewest replicas."),
        Column("Max", "integer", ".spec.maxReplicas", "Most replicas."),
        Column("Desired", "integer", ".status.desired", "Replicas wanted."),
        Column("Queued", "integer", ".status.queued", "Runnable tasks waiting."),
        Column("Running", "integer", ".status.running", "Tasks being executed."),
        _AGE,
        Column("Held", "integer", ".status.held", "Runnable tasks held back by a queue's pause or limits.",
               priority=1),
        Column("Paused", "integer", ".status.pausedReplicas", "Replicas held while autoscaling is paused.",
               priority=1),
    ),
    rules=(
        Rule("spec", "self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas",
             ".minReplicas"),
    ),
)

KINDS = (SCHEDULE, TASKRUN, WORKERPOOL)


def identity(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(namespace, name, uid) of a custom resource's body."""
    meta = body["metadata"]
    return meta["namespace"], meta["name"], meta.get("uid", "")
