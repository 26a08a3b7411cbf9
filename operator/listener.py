"""Status flows from PostgreSQL to the custom resources: a LISTEN thread with a periodic resync behind it.

Two channels are listened to on one dedicated connection:

* `kubetasks_state` ("<id>:<state>", from the `tasks_notify_state` trigger, only for tasks with an
  object_ref or a schedule): the TaskRun of each named task gets its status patched;
* `kubetasks` ("<queue>:<first id>", sent when tasks are inserted): WorkerPools consuming that queue are
  woken, and runs of operator-managed Schedules inserted since the last look get their TaskRun.

A workflow's progress is the exception: its children are no custom resources and name no TaskRun, so the
TaskRuns whose workflow is running are re-read every `workflow_progress_interval` (`runtime.LiveWorkflows`).

Notifications arriving within `notify_batch_delay` are handled with one query. NOTIFY is not durable:
whatever happens while the connection is down is lost, so after every (re)connection and every
`resync_interval` the rows changed since the last resync's start are read and mirrored again. A
notification is therefore only a hint to look now; the database stays the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from kubetasks.worker import db, protocol

from . import schedules, store, taskruns
from .runtime import Runtime

log = logging.getLogger(__name__)
RESYNC_MARGIN = timedelta(seconds=5)  # transactions commit in any order; re-read a little overlap


class Listener(threading.Thread):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="kubetasks-listener", daemon=True)
        self.rt = rt
        self.stopping = threading.Event()
        self.since: Any = None  # database time the next resync reads from
        self.after_id: int | None = None  # runs of operator Schedules with a larger id are new
        self.handled = 0  # rows mirrored, for tests and logs

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = db.Backoff.for_database(self.rt.settings.database)
        while not self.stopping.is_set():
            try:
                self._session()
                backoff.reset()
                continue  # a session only ends cleanly when stopping
            except (*db.CONNECTION_ERRORS, OSError) as exc:
                delay = backoff.next()
                log.warning("listener: database connection lost (%s); reconnecting in %.1fs", exc, delay)
            except Exception:  # an API error must not end the thread: the resync will catch up
                delay = backoff.next()
                log.exception("listener: unexpected error; restarting in %.1fs", delay)
            self.stopping.wait(delay)

    def _session(self) -> None:
        with db.connect(self.rt.settings.database, application_name="kubetasks-operator-listener") as conn:
            store.listen(conn, protocol.STATE_CHANNEL)
            store.listen(conn, protocol.QUEUE_CHANNEL)
            self.resync()  # whatever changed while nobody listened
            interval = self.rt.operator.resync_interval.total_seconds()
            next_resync = time.monotonic() + interval
            every = self.rt.operator.workflow_progress_interval.total_seconds()
            next_progress = time.monotonic() + every
            batch = self.rt.operator.notify_batch_delay.total_seconds()
            while not self.stopping.is_set():
                wait = max(0.05, min(1.0, next_resync - time.monotonic(), next_progress - time.monotonic()))
                got = list(conn.notifies(timeout=wait, stop_after=1))
                if got:
                    got.extend(conn.notifies(timeout=batch, stop_after=1000))
                    self.dispatch((n.channel, n.payload) for n in got)
                if time.monotonic() >= next_progress:
                    self.workflow_progress()
                    next_progress = time.monotonic() + every
                if time.monotonic() >= next_resync:
                    self.resync()
                    next_resync = time.monotonic() + interval

    def dispatch(self, notifications: Iterable[tuple[str, str]]) -> None:
        ids: set[int] = set()
        inserted = False
        for channel, payload in notifications:
            if channel == protocol.STATE_CHANNEL:
                change = protocol.decode_state(payload)
                if change is not None:
                    ids.add(change[0])
            elif channel == protocol.QUEUE_CHANNEL:
                wakeup = protocol.decode_wakeup(payload)
                if wakeup is not None:
                    self.rt.wakeups.wake(wakeup[0])
                inserted = True
        if inserted:
            self.new_runs()
        if ids:
            with self.rt.connection() as conn:
                rows = store.task_views(conn, ids)
            self.mirror(rows)

    def workflow_progress(self) -> None:
        """Re-read the TaskRuns' rows whose workflow is running (one query) and mirror those that moved."""
        ids = self.rt.workflows.ids()
        if not ids:
            return
        with self.rt.connection() as conn:
            rows = store.task_views(conn, ids)
        for row in self.rt.workflows.moved(ids, rows):
            try:
                taskruns.sync_task(self.rt, dict(row), create_missing=False)
            except Exception:
                log.exception("listener: could not mirror the workflow of task %s", row.get("id"))
                continue
            self.rt.workflows.settle(row)
            self.handled += 1

    def new_runs(self) -> None:
        """TaskRuns for runs of operator-managed Schedules inserted since the last look."""
        with self.rt.connection() as conn:
            if self.after_id is None:
                self.after_id = store.max_task_id(conn)
                return
            rows = store.scheduled_after(conn, self.after_id)
        if rows:
            self.after_id = max(row["id"] for row in rows)
            self.mirror(rows, create_missing=True)

    def resync(self) -> None:
        with self.rt.connection() as conn:
            started = store.database_now(conn)
            since = self.since if self.since is not None else started - self.rt.operator.resync_interval * 2
            rows = store.changed_since(conn, since - RESYNC_MARGIN)
            if self.after_id is None:
                self.after_id = store.max_task_id(conn)
        self.mirror(rows)
        self.since = started

    def mirror(self, rows: list[dict[str, Any]], create_missing: bool | None = None) -> None:
        touched: set[tuple[str, str]] = set()
        for row in rows:
            try:
                taskruns.sync_task(self.rt, row, create_missing=create_missing)
            except Exception:
                log.exception("listener: could not mirror task %s", row.get("id"))
                continue
            self.handled += 1
            target = store.target_of(row)
            if target is not None and target.schedule is not None:
                touched.add((target.namespace, target.schedule))
        for namespace, name in sorted(touched):  # Active, Last Schedule, Last Success, pruning
            try:
                schedules.sync(self.rt, namespace, name)
            except Exception:
                log.exception("listener: could not sync Schedule %s/%s", namespace, name)
