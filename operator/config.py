"""Operator settings, from the environment like the worker's (`KUBETASKS_OPERATOR__RESYNC_INTERVAL=30`).

The database URL and the actor modules are the worker's settings (`KUBETASKS_DATABASE__URL`,
`KUBETASKS_WORKER__MODULES`): the operator imports the same modules so it can refuse a Schedule or TaskRun
naming an actor that no worker would know, before anything is enqueued. They are read once, by the startup
handler in `handlers`, and passed on in the `Runtime`.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubetasks.worker.settings import Duration  # seconds, ISO 8601 or HH:MM:SS, like the worker's


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBETASKS_OPERATOR__", extra="ignore")

    resync_interval: Duration = Field(
        timedelta(seconds=30),
        description="How often TaskRun statuses are re-read from the database even without a notification "
                    "(the safety net for notifications lost while the LISTEN connection was down).")
    schedule_sync_interval: Duration = Field(
        timedelta(seconds=10),
        description="How often the schedules' rows are compared with the last look, and the Schedules whose "
                    "row changed get their status, TaskRuns and history pruning reconciled (runs and their "
                    "state changes are reconciled at once, from notifications).")
    schedule_full_resync_interval: Duration = Field(
        timedelta(minutes=10),
        description="Every Schedule is reconciled at least this often even if nothing in the database "
                    "changed (a TaskRun deleted by hand comes back), spread evenly over the interval so the "
                    "API server sees a steady trickle, not a burst.")
    workflow_progress_interval: Duration = Field(
        timedelta(seconds=2),
        description="How often TaskRuns whose workflow is running get its step progress: one query for all "
                    "of them (one aggregate of step counters per workflow); its children are not read.")
    notify_batch_delay: Duration = Field(
        timedelta(milliseconds=50),
        description="Notifications arriving within this delay are handled together (one query per burst).")
    run_scheduler: bool = Field(
        True, description="Fire due schedules from the operator too, so schedules keep firing while a "
                          "WorkerPool has scaled every worker to zero (firing is exactly-once per tick).")
    scheduler_interval: Duration = Field(
        timedelta(seconds=5), description="Longest gap between the operator's firing passes; it also wakes "
                                          "when the next schedule is due.")
    validate_actors: bool = Field(
        True, description="Refuse specs naming an actor the modules in KUBETASKS_WORKER__MODULES do not "
                          "declare; turn off when the operator image lacks the worker's code.")
    pool_size: int = Field(4, ge=1, le=64, description="Database connections of the operator.")
