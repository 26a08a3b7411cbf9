"""Fire due schedules from the operator as well as from the workers.

Workers fire schedules in their housekeeping, but a WorkerPool may scale them to zero; then nobody would
fire the tick whose task should wake the pool up again. The operator is always running, so it fires too,
with the workers' own `scheduler.FiringService` (the same passes and timing: on time for the next due
schedule, at least every `scheduler_interval`), on a thread of its own and a pooled connection per pass.
Firing is exactly-once per tick whoever does it (row lock with SKIP LOCKED, compare-and-set of next_run,
and the unique index on (schedule_name, schedule_tick)), so the two never double a run.
"""

from __future__ import annotations

import threading

from kubetasks.worker import scheduler

from .runtime import Runtime


class Firing(threading.Thread):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="kubetasks-scheduler", daemon=True)
        self.rt = rt
        self.stopping = threading.Event()
        self.service = scheduler.FiringService(rt.settings, rt.operator.scheduler_interval.total_seconds())

    @property
    def fired(self) -> int:
        return self.service.fired

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.service.serve(self.rt.connection, self.stopping)
