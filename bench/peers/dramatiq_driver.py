"""dramatiq + dramatiq-postgres driver for the bench suite; runs in bench/.venv-peers only.

Enqueue: dramatiq has no bulk-send API, so `actor.send()` per message (one INSERT and commit
each) is the fastest public way. Workers: the `dramatiq` CLI with --processes P --threads C,
started by the orchestrator (this driver's `worker` command execs it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psycopg
from _common import emit, fail_flag, parser, steady_sync

DSN = os.environ.get("BENCH_DSN", "")
HERE = os.path.dirname(os.path.abspath(__file__))


def schema() -> None:
    from dramatiq_postgres import init

    with psycopg.connect(DSN) as conn, conn.cursor() as curs:
        init(curs)


def enqueue(n: int, fail_every: int) -> float:
    from dramatiq_tasks import bench_noop

    t0 = time.perf_counter()
    for i in range(n):
        bench_noop.send(i, fail_flag(i, fail_every))
    return time.perf_counter() - t0


def prefill(queued: int, finished: int) -> None:
    # Unmeasured deep-queue set-up built server-side in the broker's message format. dramatiq-postgres
    # deletes acknowledged messages, so there are no finished rows to add (`finished` is ignored).
    del finished
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dramatiq.queue (queue_name, message_id, state, message) "
            "SELECT 'default', id, 'queued', jsonb_build_object("
            " 'queue_name', 'default', 'actor_name', 'bench_noop', 'args', jsonb_build_array(g, 0),"
            " 'kwargs', '{}'::jsonb, 'options', '{}'::jsonb, 'message_id', id::text,"
            " 'message_timestamp', (extract(epoch FROM now()) * 1000)::bigint) "
            "FROM (SELECT gen_random_uuid() AS id, g FROM generate_series(0, %s - 1) AS g) AS s",
            (queued,))
        conn.execute("ANALYZE dramatiq.queue")


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {}
    if args.command == "schema":
        schema()
    elif args.command == "enqueue":
        result["seconds"] = enqueue(args.n, args.fail_every)
    elif args.command == "prefill":
        prefill(args.n, args.finished)
    elif args.command == "probe":
        from dramatiq_tasks import bench_noop

        bench_noop.send(-1, 0)
    elif args.command == "steady":
        from dramatiq_tasks import bench_noop

        result["enqueued"] = steady_sync(lambda i: bench_noop.send(i, 0) and None, args.rate,
                                         args.duration, args.out)
    elif args.command == "worker":
        # Replace this process with the dramatiq CLI so the orchestrator's pid is its master.
        cli = os.path.join(os.path.dirname(sys.executable), "dramatiq")
        os.execv(cli, [cli, "dramatiq_tasks", "--path", HERE, "--processes", str(args.processes),
                       "--threads", str(args.concurrency)])
    emit(**result)


if __name__ == "__main__":
    main()
