"""pgqueuer driver for the bench suite; runs in bench/.venv-peers only.

Bulk enqueue: `Queries.enqueue` with lists (one multi-row insert per batch), asyncpg driver.
Workers: `PgQueuer.run(**BENCH_PGQUEUER_RUN)` with async no-op entrypoints, one process per
"worker process"; the keyword arguments come from the adapter (bench/systems/peers.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import timedelta
from typing import Any

import asyncpg
from _common import FailOnce, chunks, emit, fail_flag, parser, record, should_fail, steady_async
from pgqueuer import AsyncpgDriver, DatabaseRetryEntrypointExecutor, Job, PgQueuer, Queries
from pgqueuer.core.executors import EntrypointExecutorParameters
from pgqueuer.models import Schedule

DSN = os.environ.get("BENCH_DSN", "")
ENTRYPOINT = "bench_noop"


def payload(i: int, f: int) -> bytes:
    return json.dumps({"i": i, "f": f}).encode()


async def bench_noop(job: Job) -> None:
    data = json.loads(job.payload or b"{}")
    record(data["i"])
    if should_fail(data.get("f"), job.attempts):
        raise FailOnce(data["i"])


async def bench_sched(schedule: Schedule) -> None:
    record(schedule.entrypoint)


def retry_once(params: EntrypointExecutorParameters) -> DatabaseRetryEntrypointExecutor:
    # Database-level retry, immediately, at most one extra attempt.
    return DatabaseRetryEntrypointExecutor(parameters=params, max_attempts=2, initial_delay=timedelta(0))


async def queries() -> Queries:
    return Queries(AsyncpgDriver(await asyncpg.connect(DSN)))


async def schema() -> None:
    q = await queries()
    await q.install()


async def enqueue(n: int, fail_every: int, batch: int) -> float:
    q = await queries()
    t0 = time.perf_counter()
    for part in chunks(n, batch):
        await q.enqueue([ENTRYPOINT] * len(part), [payload(i, fail_flag(i, fail_every)) for i in part],
                        [0] * len(part))
    return time.perf_counter() - t0


async def prefill(queued: int, finished: int) -> None:
    # Unmeasured deep-queue set-up, built server-side. Finished jobs live in pgqueuer_log.
    conn = await asyncpg.connect(DSN)
    await conn.execute(
        "INSERT INTO pgqueuer_log (job_id, status, priority, entrypoint) "
        "SELECT g, 'successful', 0, $1 FROM generate_series(1, $2::int) AS g", ENTRYPOINT, finished)
    await conn.execute(
        "INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
        "SELECT 0, $1, convert_to(json_build_object('i', g, 'f', 0)::text, 'UTF8'), 'queued' "
        "FROM generate_series(0, $2::int - 1) AS g", ENTRYPOINT, queued)
    await conn.execute("ANALYZE pgqueuer; ANALYZE pgqueuer_log")
    await conn.close()


async def probe() -> None:
    q = await queries()
    await q.enqueue(ENTRYPOINT, payload(-1, 0))


async def steady(rate: float, duration: float, out: str) -> int:
    q = await queries()

    async def one(i: int) -> None:
        await q.enqueue(ENTRYPOINT, payload(i, 0))
    return await steady_async(one, rate, duration, out)


async def worker(concurrency: int, schedules: int) -> None:
    pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(DSN)))
    pgq.entrypoint(ENTRYPOINT, executor_factory=retry_once)(bench_noop)
    for k in range(schedules):
        pgq.schedule(f"s{k}", "* * * * *")(bench_sched)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pgq.shutdown.set)
    del concurrency  # the adapter puts it into the run() arguments (max_concurrent_tasks) when capped
    await pgq.run(**json.loads(os.environ.get("BENCH_PGQUEUER_RUN", "{}")))


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {}
    if args.command == "schema":
        asyncio.run(schema())
    elif args.command == "enqueue":
        result["seconds"] = asyncio.run(enqueue(args.n, args.fail_every, args.batch))
    elif args.command == "prefill":
        asyncio.run(prefill(args.n, args.finished))
    elif args.command == "probe":
        asyncio.run(probe())
    elif args.command == "steady":
        result["enqueued"] = asyncio.run(steady(args.rate, args.duration, args.out))
    elif args.command == "worker":
        asyncio.run(worker(args.concurrency, args.schedules))
    emit(**result)


if __name__ == "__main__":
    main()
