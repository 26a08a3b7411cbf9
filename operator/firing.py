"""Fire due schedules from the operator as well as from the workers.

Workers fire schedules in their housekeeping, but a WorkerPool may scale them to zero; then nobody would
fire the tick whose task should wake the pool up again. The operator is always running, so it fires too.
Firing is exactly-once per tick whoever does it (row lock with SKIP LOCKED plus the unique index on
(schedule_name, schedule_tick)), so the two never double a run.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from kubetasks.worker import scheduler

from .runtime import Runtime

log = logging.getLogger(__name__)


class Firing(threading.Thread):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="kubetasks-scheduler", daemon=True)
        self.rt = rt
        self.stopping = threading.Event()
        self.fired = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        interval = self.rt.operator.scheduler_interval.total_seconds()
        while not self.stopping.wait(interval):
            try:
                with self.rt.connection() as conn:
                    self.fired += len(scheduler.fire_due(conn, self.rt.settings))
            except psycopg.Error as exc:
                log.warning("scheduler: %s", exc)
            except Exception:
                log.exception("scheduler: firing due schedules failed")
