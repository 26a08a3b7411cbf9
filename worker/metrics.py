"""Prometheus metrics. Labels carry actor, queue, state and schedule names only, never task arguments.

Counters and histograms are recorded by the worker processes (in multiprocess mode when a replica runs
several). Counts that only the database knows (tasks by state, queue depth, last schedule success) are
read at scrape time by `DatabaseCollector`, cached for a few seconds so scrapes stay cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import controls, cron, db, queries, queue, workflows

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from .settings import DatabaseSettings

log = logging.getLogger(__name__)

FINISHED = Counter("kubetasks_tasks_finished", "Attempts finished by this worker, by actor and final state.",
                   ["actor", "state"])
RETRIES = Counter("kubetasks_task_retries", "Attempts that ended in a retry, by actor.", ["actor"])
IN_PROGRESS = Gauge("kubetasks_tasks_in_progress", "Tasks executing now, by actor.", ["actor"],
                    multiprocess_mode="livesum")
DURATION = Histogram("kubetasks_task_duration_seconds", "Duration of finished attempts, by actor.", ["actor"],
                     buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600))


OVERDUE_GRACE = 60.0  # seconds past its time limit before a running attempt counts as overdue


def schedule_period(expression: str, time_zone: str, now: datetime) -> float | None:
    """Seconds between a schedule's next two ticks (its period, for "no success in N periods" alerts)."""
    first = cron.next_tick(expression, time_zone, now)
    second = cron.next_tick(expression, time_zone, first) if first is not None else None
    return (second - first).total_seconds() if first is not None and second is not None else None


class DatabaseCollector(Collector):
    """Task counts by state and actor, queue depth and schedule success times, read from PostgreSQL."""

    def __init__(self, database: DatabaseSettings, cache_seconds: float = 10.0) -> None:
        self.database = database
        self._pool: ConnectionPool[Any] | None = None  # made at the first scrape: one connection, kept
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._at = 0.0
        self._families: list[GaugeMetricFamily] = []

    def _read(self) -> list[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("kubetasks_tasks", "Tasks in the database, by state and actor.",
                                  labels=["state", "actor"])
        depth = GaugeMetricFamily("kubetasks_queue_depth", "Tasks waiting per queue: runnable now, delayed "
                                  "(future eta or retry backoff) and executing.", labels=["queue", "kind"])
        flows = GaugeMetricFamily("kubetasks_workflows", "Workflows (parent tasks) in the database, by state.",
                                  labels=["state"])
        last = GaugeMetricFamily("kubetasks_schedule_last_success_timestamp_seconds",
                                 "When each schedule's last run succeeded.", labels=["schedule"])
        oldest = GaugeMetricFamily("kubetasks_queue_oldest_runnable_age_seconds",
                                   "Seconds the oldest runnable task of each queue has waited since it was due.",
                                   labels=["queue"])
        overdue = GaugeMetricFamily("kubetasks_tasks_overdue", "Attempts running past their time limit plus "
                                    f"{OVERDUE_GRACE:.0f}s, per queue (stuck, not stopped).", labels=["queue"])
        period = GaugeMetricFamily("kubetasks_schedule_period_seconds", "Seconds between each unpaused "
                                   "schedule's next two ticks.", labels=["schedule"])
        events = GaugeMetricFamily("kubetasks_notifications", "Notification events in the outbox, by state "
                                   "(pending, delivered, failed).", labels=["state"])
        pending_age = GaugeMetricFamily("kubetasks_notifications_oldest_pending_age_seconds",
                                        "Age of the oldest undelivered notification event (0: none).")
        paused = GaugeMetricFamily("kubetasks_queue_paused", "1 while a queue is paused (queues with controls).",
                                   labels=["queue"])
        limits = GaugeMetricFamily("kubetasks_queue_limit", "A queue's limits: concurrency (running at once), "
                                   "key_concurrency (running per args key), rate_per_second (starts).",
                                   labels=["queue", "kind"])
        held = GaugeMetricFamily("kubetasks_queue_held_tasks", "Runnable tasks a queue's pause or limits keep "
                                 "from starting now (queues with controls).", labels=["queue"])
        if self._pool is None:
            self._pool = db.pool(self.database, min_size=0, max_size=1, application_name="kubetasks-metrics")
        with self._pool.connection(timeout=2) as conn:
            for row in queue.stats(conn):
                tasks.add_metric([row["state"], row["actor"]], row["count"])
            for row in queue.queue_depth(conn):
                for kind in ("runnable", "delayed", "executing"):
                    depth.add_metric([row["queue"], kind], row[kind])
            for row in conn.execute(queries.get("schedule_list_last_success")):
                last.add_metric([row["name"]], row["last_success"].timestamp())
            for state, count in workflows.count_by_state(conn).items():
                flows.add_metric([state], count)
            for row in conn.execute(queries.get("queue_oldest_runnable")):
                oldest.add_metric([row["queue"]], max(0.0, row["seconds"]))
            for row in conn.execute(queries.get("task_count_overdue"), {"grace": OVERDUE_GRACE}):
                overdue.add_metric([row["queue"]], row["overdue"])
            now = db.now(conn)
            for row in conn.execute(queries.get("schedule_list_crons")):
                seconds = schedule_period(row["cron"], row["time_zone"], now)
                if seconds is not None:
                    period.add_metric([row["name"]], seconds)
            counts = {"pending": 0, "delivered": 0, "failed": 0}
            age = 0.0
            for row in conn.execute(queries.get("notification_count_by_state")):
                counts[row["state"]] = row["n"]
                if row["state"] == "pending":
                    age = max(0.0, row["oldest_seconds"] or 0.0)
            for state, n in counts.items():
                events.add_metric([state], n)
            pending_age.add_metric([], age)
            controlled = controls.list_controls(conn)
            for control in controlled:
                paused.add_metric([control.name], 1.0 if control.paused else 0.0)
                for kind, value in (("concurrency", control.concurrency_limit),
                                    ("key_concurrency", control.key_concurrency_limit),
                                    ("rate_per_second", control.rate_limit / control.rate_period
                                     if control.rate_limit and control.rate_period else None)):
                    if value is not None:
                        limits.add_metric([control.name, kind], value)
            found = {row["queue"]: row for row in controls.startable(conn, [c.name for c in controlled])
                     } if controlled else {}
            for control in controlled:
                counts = found.get(control.name) or {"runnable": 0, "startable": 0}
                held.add_metric([control.name], counts["runnable"] - counts["startable"])
        return [tasks, depth, last, flows, oldest, overdue, period, events, pending_age, paused, limits, held]

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not query the database (it may not be up yet)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at > self.cache_seconds:
                try:
                    self._families = self._read()
                except Exception as exc:  # a scrape must not fail because the database is away
                    log.warning("metrics: cannot read the database: %s", exc)
                self._at = time.monotonic()
            yield from self._families
