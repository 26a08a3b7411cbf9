"""dramatiq actors and broker for the bench suite (imported by `dramatiq` workers and the driver).

The Postgres broker is dramatiq-postgres; results are off since no bench task returns one.
"""

from __future__ import annotations

import os

import dramatiq
from _common import FailOnce, record, should_fail
from dramatiq.middleware import CurrentMessage
from dramatiq_postgres import PostgresBroker

broker = PostgresBroker(url=os.environ.get("BENCH_DSN", ""), results=False)
broker.add_middleware(CurrentMessage())  # gives the actor its retry count
dramatiq.set_broker(broker)


# Retry once, right away (1 ms backoff; dramatiq treats 0 as "use the 15 s default").
@dramatiq.actor(actor_name="bench_noop", max_retries=1, min_backoff=1, max_backoff=2)
def bench_noop(i: int, f: int = 0) -> None:
    record(i)
    message = CurrentMessage.get_current_message()
    attempt = message.options.get("retries", 0) if message is not None else 0
    if should_fail(f, attempt):
        raise FailOnce(i)
