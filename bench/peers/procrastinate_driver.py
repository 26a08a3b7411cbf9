"""procrastinate driver for the bench suite; runs in bench/.venv-peers only.

Bulk enqueue: `Task.batch_defer_async` (one `procrastinate_defer_jobs_v1` call per batch).
Workers: `App.run_worker_async(concurrency=C)` with async no-op tasks; the orchestrator starts
one process per "worker process" so P x C slots match the other systems.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import procrastinate
import psycopg
from _common import FailOnce, chunks, emit, fail_flag, parser, record, should_fail, steady_async

DSN = os.environ.get("BENCH_DSN", "")
SCHEDULES = int(os.environ.get("BENCH_SCHEDULES", "0"))

# The deferrer wakes 0.5 s after each tick and skips ticks older than max_delay; a short max_delay
# (instead of the default 10 min) avoids a catch-up deferral of the previous minute at start-up.
app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=DSN, min_size=1, max_size=12),
    periodic_defaults={"max_delay": 10},
)


# max_attempts=2, wait=0: a first-attempt failure is retried once, immediately.
@app.task(name="bench_noop", pass_context=True, retry=procrastinate.RetryStrategy(max_attempts=2))
async def bench_noop(context: procrastinate.JobContext, i: int, f: int = 0) -> None:
    record(i)
    assert context.job is not None
    if should_fail(f, context.job.attempts):
        raise FailOnce(i)


@app.task(name="bench_sched")
async def bench_sched(timestamp: int, k: int) -> None:
    record(f"s{k}")


for _k in range(SCHEDULES):
    app.periodic(cron="* * * * *", periodic_id=f"s{_k}", task_kwargs={"k": _k})(bench_sched)


async def schema() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue(n: int, fail_every: int, batch: int) -> float:
    async with app.open_async():
        t0 = time.perf_counter()
        for part in chunks(n, batch):
            await bench_noop.batch_defer_async(*({"i": i, "f": fail_flag(i, fail_every)} for i in part))
        return time.perf_counter() - t0


def prefill(queued: int, finished: int) -> None:
    # Unmeasured set-up of the deep-queue scenario: rows built server-side, as defer_jobs would.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts) "
            "SELECT 'default', 'bench_noop', jsonb_build_object('i', -2, 'f', 0), 'succeeded', 1 "
            "FROM generate_series(1, %s)", (finished,))
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
            "SELECT 'default', 'bench_noop', jsonb_build_object('i', g, 'f', 0) "
            "FROM generate_series(0, %s - 1) AS g", (queued,))
        conn.execute("ANALYZE procrastinate_jobs")


async def probe() -> None:
    async with app.open_async():
        await bench_noop.defer_async(i=-1, f=0)


async def steady(rate: float, duration: float, out: str) -> int:
    async with app.open_async():
        async def one(i: int) -> None:
            await bench_noop.defer_async(i=i, f=0)
        return await steady_async(one, rate, duration, out)


async def worker(concurrency: int) -> None:
    async with app.open_async():
        # Let SIGTERM stop the worker gracefully: procrastinate installs its own handlers.
        await app.run_worker_async(concurrency=concurrency, wait=True)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {}
    if args.command == "schema":
        asyncio.run(schema())
    elif args.command == "enqueue":
        result["seconds"] = asyncio.run(enqueue(args.n, args.fail_every, args.batch))
    elif args.command == "prefill":
        prefill(args.n, args.finished)
    elif args.command == "probe":
        asyncio.run(probe())
    elif args.command == "steady":
        result["enqueued"] = asyncio.run(steady(args.rate, args.duration, args.out))
    elif args.command == "worker":
        signal.signal(signal.SIGINT, signal.default_int_handler)
        asyncio.run(worker(args.concurrency))
    emit(**result)


if __name__ == "__main__":
    main()
