"""Maintenance on timers, in every worker process, whether the worker is busy or idle:
rescue attempts whose worker died, purge expired tasks in batches, fire due schedules.

Each job is safe to run from many processes at once (SKIP LOCKED, advisory locks, compare-and-set),
so no leader election is needed. Schedules are fired by `scheduler.FiringService`, the same service and
timing the operator uses. It runs on its own thread and connection so a slow purge never
delays claiming.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import db, notifications, queries, queue, scheduler
from .settings import Settings

log = logging.getLogger(__name__)


def rescue(conn: db.Conn, settings: Settings, limit: int = 500, grace: float = 0.0) -> list[dict[str, object]]:
    """Retry (or fail, once out of retries) attempts whose worker no longer holds their advisory lock."""
    worker = settings.worker
    with conn.transaction():
        rows = list(conn.execute(queries.get("task_rescue"), {
            "limit": limit, "grace": grace, "backoff_base": worker.retry_backoff_base.total_seconds(),
            "backoff_max": worker.retry_backoff_max.total_seconds()}))
    for row in rows:
        log.warning("task %s: worker lost during attempt %s; now %s", row["id"], row["attempts"], row["state"])
    return rows


def purge(conn: db.Conn, settings: Settings) -> int:
    worker = settings.worker
    return queue.purge(conn, worker.task_expiration.total_seconds(), worker.task_purge_batch)


@dataclass
class Job:
    name: str
    interval: float
    run: Callable[[db.Conn, Settings], object]
    next_at: float = 0.0


class Housekeeper(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="kubetasks-housekeeping", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()
        worker = settings.worker
        self.firing = scheduler.FiringService(settings, worker.scheduler_interval.total_seconds())
        # Notification delivery waits on receivers, so it has a thread and connection of its own.
        self.delivery = notifications.DeliveryService(settings) if settings.notifications.enabled else None
        start = time.monotonic()
        self.jobs = [
            # First rescue only after one interval: workers reconnecting after a database restart get
            # time to take their locks back before anyone calls their attempts lost.
            Job("rescue", worker.rescue_interval.total_seconds(), rescue,
                start + worker.rescue_interval.total_seconds()),
            Job("purge", worker.task_purge_interval.total_seconds(), purge, start),
            Job("scheduler", self.firing.interval, lambda conn, _: self.firing.run_due(conn), start),
        ]

    def stop(self) -> None:
        self.stopping.set()
        if self.delivery is not None:
            self.delivery.stop()

    def run(self) -> None:
        if self.delivery is not None and not self.delivery.is_alive():
            self.delivery.start()
        conn: db.Conn | None = None
        backoff = db.Backoff.for_database(self.settings.database)
        while not self.stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = db.connect(self.settings.database, application_name="kubetasks-housekeeping")
                    for job in self.jobs:  # after a reconnection, rescue waits a full interval again
                        if job.name == "rescue":
                            job.next_at = time.monotonic() + job.interval
                backoff.reset()
                now = time.monotonic()
                for job in self.jobs:
                    if now >= job.next_at and not self.stopping.is_set():
                        job.next_at = now + job.interval
                        self._run_job(job, conn)
                        if job.name == "scheduler":
                            # Sleep until the next schedule is due rather than a whole interval: on time.
                            job.next_at = min(job.next_at, time.monotonic() + self.firing.next_wait(conn))
                wait = min(job.next_at for job in self.jobs) - time.monotonic()
                self.stopping.wait(max(0.05, wait))
            except db.CONNECTION_ERRORS as exc:
                delay = backoff.next()
                log.warning("housekeeping lost the database (%s); retrying in %.1fs", exc, delay)
                if conn is not None:
                    conn.close()
                conn = None
                self.stopping.wait(delay)
        if conn is not None:
            conn.close()

    def _run_job(self, job: Job, conn: db.Conn) -> None:
        try:
            result = job.run(conn, self.settings)
            count = len(result) if isinstance(result, list) else result
            if count:
                log.info("housekeeping %s: %s", job.name, count)
        except db.CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("housekeeping %s failed", job.name)
