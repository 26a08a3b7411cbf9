"""The contracts every part of kubetasks shares: workers, the operator, the SQL files and the tests.

One source for each, because copies drift: the wake-up payload was once parsed with `partition(":")` in one
place and `rpartition(":")` in another while queue names may contain ':', so a worker on `team:billing` only
found its tasks at the next fallback scan. Pure constants and functions; no I/O, no third-party imports.

The SQL side of these contracts (the `notify_*` triggers in the migrations, the `task_state` enum) spells
the same values; `tests/postgres/test_protocol.py` checks that the database and this module agree.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

# -- Notification channels ---------------------------------------------------------------------------------
# Sent by the `tasks_notify_queued` trigger on commit: "<queue>:<lowest new id>", once per queue.
QUEUE_CHANNEL: Final = "kubetasks"
# Sent by the `tasks_notify_state` trigger for tasks of a Schedule or an object: "<id>:<state>".
STATE_CHANNEL: Final = "kubetasks_state"
# Sent by `task_cancel`: "<id>"; the worker running that task interrupts it.
CANCEL_CHANNEL: Final = "kubetasks_cancel"
# Sent by the `tasks_notification_enqueue` trigger when it wrote outbox rows, with an empty payload (so Postgres
# folds a transaction's many into one); wakes the notification delivery service.
NOTIFICATION_CHANNEL: Final = "kubetasks_notification"
# Sent by the `queues_notify_control*` triggers when a queue is paused, resumed or its limits change:
# "<queue>"; workers re-read that queue's controls (they cache them, so an unlimited claim pays nothing).
QUEUE_CONTROL_CHANNEL: Final = "kubetasks_queue_control"


def encode_wakeup(queue: str, task_id: int) -> str:
    return f"{queue}:{task_id}"


def decode_wakeup(payload: str) -> tuple[str, int] | None:
    """(queue, id) of a QUEUE_CHANNEL payload, None when malformed. The id is last and never holds ':',
    so the split is at the last colon: the queue name before it may hold any number of them."""
    queue, sep, task_id = payload.rpartition(":")
    if not sep or not queue or not task_id.isdigit():
        return None
    return queue, int(task_id)


def encode_state(task_id: int, state: str) -> str:
    return f"{task_id}:{state}"


def decode_state(payload: str) -> tuple[int, str] | None:
    task_id, sep, state = payload.partition(":")
    if not sep or not task_id.isdigit() or state not in STATES:
        return None
    return int(task_id), state


def encode_cancel(task_id: int) -> str:
    return str(task_id)


def decode_cancel(payload: str) -> int | None:
    return int(payload) if payload.isdigit() else None


# -- Advisory locks ----------------------------------------------------------------------------------------
# Advisory lock classes: each is one kind of lock, so `pg_locks` reads by class (classid for two-key locks).
MIGRATION_LOCK: Final = 7010  # the one-key lock (bigint 7010) a session holds while `migrate` runs
# Held (session-level) per attempt by workers before schema 6; key = the task id's low 31 bits. Still checked by
# the rescuer (transaction-level), so attempts of such workers are not taken from them during an upgrade.
ATTEMPT_LOCK: Final = 7011
OPERATOR_LOCK: Final = 7012  # held (transaction-level) by the operator around "find a row, insert if missing"
# Held (session-level) by a worker's claiming connection for as long as it lives; key = the worker session's
# number (sequence kubetasks.worker_sessions), which every task it claims records in tasks.session. One lock
# per worker, however many attempts it runs: the rescuer asks "is this session's lock held".
WORKER_LOCK: Final = 7013
# The names the SQL files use for them, replaced by the query loader (`{lock:attempt}` → 7011).
SQL_LOCK_CLASSES: Final = {"migration": MIGRATION_LOCK, "attempt": ATTEMPT_LOCK, "operator": OPERATOR_LOCK,
                           "worker": WORKER_LOCK}


def attempt_lock_key(task_id: int) -> int:
    """The second key of a task's attempt lock: the id's low 31 bits (an int4, as Postgres wants)."""
    return task_id & 0x7FFFFFFF


# -- Task states -------------------------------------------------------------------------------------------
TaskState = Literal["queued", "running", "successful", "warning", "error", "cancelled"]
STATES: Final[tuple[TaskState, ...]] = get_args(TaskState)
LIVE_STATES: Final[tuple[TaskState, ...]] = ("queued", "running")  # not finished: may still run
FINAL_STATES: Final[tuple[TaskState, ...]] = ("successful", "warning", "error", "cancelled")
OK_STATES: Final[tuple[TaskState, ...]] = ("successful", "warning")  # a run that did its job

# -- Workflows --------------------------------------------------------------------------------------------
# The pseudo-actor of a workflow's parent task (migration 0005): it never runs on a worker.
WORKFLOW_ACTOR: Final = "kubetasks.workflow"

# -- Names -------------------------------------------------------------------------------------------------
# Anchored patterns, as a CRD's OpenAPI `pattern` wants them; the compiled forms use fullmatch.
ACTOR_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,255}$"
QUEUE_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,128}$"
ACTOR_NAME: Final = re.compile(ACTOR_PATTERN.strip("^$"))
QUEUE_NAME: Final = re.compile(QUEUE_PATTERN.strip("^$"))
# Kubernetes object names: Schedules are DNS subdomains, namespaces DNS labels.
DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN: Final = re.compile(r"^(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# -- Cron --------------------------------------------------------------------------------------------------
# The macros Kubernetes CronJob accepts, plus @midnight, and the five-field expression each stands for.
CRON_MACROS: Final = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                      "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                      "@hourly": "0 * * * *"}
