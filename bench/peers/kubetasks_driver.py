"""kubetasks driver for the bench suite; runs in the project's own venv (PYTHONPATH: bench/.pypath).

Bulk enqueue: `queue.enqueue_many` (COPY) per batch; single enqueues: `queue.enqueue`. The worker is
the `kubetasks worker` command, started by the orchestrator, not by this driver.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _common import chunks, emit, fail_flag, parser, steady_sync

import bench.tasks_kubetasks  # noqa: F401 - declares the actors enqueue validates against
from kubetasks.worker import db, queue, schedules
from kubetasks.worker.manifests import ScheduleSpec

DSN = os.environ.get("BENCH_DSN", "")
ACTOR = os.environ.get("BENCH_KUBETASKS_ACTOR", "bench.noop")  # or bench.noop_async


def enqueue(n: int, fail_every: int, batch: int) -> float:
    with db.connect(DSN) as conn:
        t0 = time.perf_counter()
        for part in chunks(n, batch):
            queue.enqueue_many(conn, ACTOR, ({"i": i, "f": fail_flag(i, fail_every)} for i in part))
        return time.perf_counter() - t0


def prefill(queued: int, finished: int) -> None:
    # Unmeasured deep-queue set-up built server-side; finished rows stay in kubetasks.tasks.
    with db.connect(DSN) as conn:
        conn.execute(
            "INSERT INTO kubetasks.tasks (actor, args, state, reason, attempts, started_at, "
            " attempt_started_at, finished_at) "
            "SELECT %s, jsonb_build_object('i', -2, 'f', 0), 'successful', 'Succeeded', 1, now(), now(), now() "
            "FROM generate_series(1, %s)", (ACTOR, finished))
        conn.execute(
            "INSERT INTO kubetasks.tasks (actor, args) "
            "SELECT %s, jsonb_build_object('i', g, 'f', 0) FROM generate_series(0, %s - 1) AS g",
            (ACTOR, queued))
        conn.execute("ANALYZE kubetasks.tasks")


def add_schedules(n: int) -> None:
    # kubetasks keeps schedules in the database (from manifests or Schedule resources); the scheduler
    # inside every worker fires them. One `apply` per schedule, as `kubetasks apply` does.
    with db.connect(DSN) as conn:
        for k in range(n):
            schedules.apply(conn, f"bench/s{k}", ScheduleSpec(actor="bench.sched", args={"k": k},
                                                              schedule="* * * * *"), source="cli")


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {}
    if args.command == "schema":
        db.migrate(DSN)
    elif args.command == "enqueue":
        result["seconds"] = enqueue(args.n, args.fail_every, args.batch)
    elif args.command == "prefill":
        prefill(args.n, args.finished)
    elif args.command == "probe":
        with db.connect(DSN) as conn:
            queue.enqueue(conn, ACTOR, {"i": -1, "f": 0})
    elif args.command == "steady":
        with db.connect(DSN) as conn:
            result["enqueued"] = steady_sync(lambda i: queue.enqueue(conn, ACTOR, {"i": i, "f": 0}) and None,
                                             args.rate, args.duration, args.out)
    elif args.command == "schedules":
        add_schedules(args.n)
    elif args.command == "worker":
        sys.exit("kubetasks workers are started with `kubetasks worker`, not by this driver")
    emit(**result)


if __name__ == "__main__":
    main()
