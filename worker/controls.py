"""Queue controls: pause and resume a queue, limit its concurrency (per queue and per key) and its start rate.

The state lives in `kubetasks.queues` (migration 0008), one row per queue that has a control, so it survives
restarts and every replica sees the same. Workers cache the rows of their queues and re-read one when the
`queues_notify_control*` triggers announce a change on `protocol.QUEUE_CONTROL_CHANNEL`: a paused queue is
not claimed from at all, an unlimited one is claimed with `task_claim` as if controls did not exist, and only a
limited one pays for `task_claim_limited` (sql/queues.sql), which enforces the limits in the database.

Semantics (see README "Queue controls"):
- `concurrency_limit`: at most N tasks of the queue held by workers at once, across all replicas. A task
  counts from its claim to its outcome (prefetched tasks included), not while it waits out a retry backoff.
- `concurrency_key` + `key_concurrency_limit`: at most M of them per value of `args[key]`; a task whose args
  lack the key is limited by the queue's limits only.
- `rate_limit` per `rate_period`: a token bucket of `rate_limit` tokens refilled continuously, so over any
  interval of t seconds at most `rate_limit * (1 + t / rate_period)` tasks start, and `rate_limit` per period
  in the long run. Setting a new rate starts with an empty bucket.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import db, queries, registry
from .errors import InvalidInput

# Runnable tasks a claim on a queue with a per-key limit looks through for keys that still have slots.
KEY_SCAN = 1000
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smh]?)\s*$")


@dataclass(frozen=True)
class QueueControl:
    name: str
    paused: bool = False
    concurrency_limit: int | None = None
    concurrency_key: str | None = None
    key_concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None  # seconds

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QueueControl:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    @property
    def limited(self) -> bool:
        """Whether claims must go through task_claim_limited."""
        return (self.concurrency_limit is not None or self.key_concurrency_limit is not None
                or self.rate_limit is not None)

    def claim_scan(self, limit: int) -> int:
        """Runnable tasks the limited claim considers: more than it wants when some keys may be full."""
        return max(limit, KEY_SCAN) if self.key_concurrency_limit is not None else limit

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"limited": self.limited}


def parse_rate(text: str, field: str = "rate") -> tuple[int, float]:
    """'50/s', '100/1m', '10/30s', '5/2.5' (seconds) -> (starts, period in seconds)."""
    match = _RATE.match(text or "")
    if not match:
        raise InvalidInput(field, f"{text!r} is not a rate", "write STARTS/PERIOD, e.g. 50/s, 100/1m or 10/30s")
    starts, amount, unit = int(match.group(1)), match.group(2), match.group(3) or "s"
    period = (float(amount) if amount not in ("", ".") else 1.0) * _PERIODS[unit]
    if starts < 1 or period <= 0:
        raise InvalidInput(field, f"{text!r} allows no start", "use at least 1 start per a period above 0")
    return starts, period


def validate(control: QueueControl) -> QueueControl:
    registry.validate_queue(control.name)
    for field in ("concurrency_limit", "key_concurrency_limit", "rate_limit"):
        value = getattr(control, field)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidInput(field, f"{value!r} is not a whole number of at least 1",
                               "give 1 or more, or clear the limit")
    if (control.concurrency_key is None) != (control.key_concurrency_limit is None):
        raise InvalidInput("concurrency_key", "a per-key limit needs both the args key and the limit",
                           "give both, e.g. --key customer_id --per-key 1")
    if control.concurrency_key is not None and not 1 <= len(control.concurrency_key) <= 128:
        raise InvalidInput("concurrency_key", f"{control.concurrency_key!r} is not an args key",
                           "name a top-level key of the tasks' args, 1-128 characters")
    if (control.rate_limit is None) != (control.rate_period is None):
        raise InvalidInput("rate_period", "a rate limit needs both the number of starts and the period",
                           "give both, e.g. --rate 50/s")
    if control.rate_period is not None and not control.rate_period > 0:
        raise InvalidInput("rate_period", f"{control.rate_period!r} is not a period", "give seconds above 0")
    return control


def get(conn: db.Conn, name: str) -> QueueControl:
    """The queue's controls (the defaults, unpaused and unlimited, when it has no row)."""
    names = [registry.validate_queue(name)]
    rows = conn.execute(queries.get("queue_control_get_many"), {"names": names}).fetchall()
    return QueueControl.from_row(rows[0]) if rows else QueueControl(name)


def list_controls(conn: db.Conn) -> list[QueueControl]:
    return [QueueControl.from_row(row) for row in conn.execute(queries.get("queue_control_list"))]


def set_paused(conn: db.Conn, name: str, paused: bool) -> QueueControl:
    params = {"name": registry.validate_queue(name), "paused": paused}
    row = conn.execute(queries.get("queue_control_pause"), params).fetchone()
    assert row is not None
    return QueueControl.from_row(row)


def set_limits(conn: db.Conn, control: QueueControl) -> QueueControl:
    """Store exactly the limits of `control` (its `paused` is left as stored); returns what was stored."""
    params = dataclasses.asdict(validate(control))
    del params["paused"]
    row = conn.execute(queries.get("queue_control_set_limits"), params).fetchone()
    assert row is not None
    return QueueControl.from_row(row)


async def load(conn: db.AsyncConn, names: Iterable[str]) -> dict[str, QueueControl]:
    """The controls of `names` that have a row (what a worker caches; missing means unpaused, unlimited)."""
    cur = await conn.execute(queries.get("queue_control_get_many"), {"names": list(names)})
    return {row["name"]: QueueControl.from_row(row) for row in await cur.fetchall()}


def startable(conn: db.Conn, queues: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per queue: runnable, running, how many of the runnable could start now under its controls, paused."""
    return list(conn.execute(queries.get("queue_list_startable"),
                             {"queues": None if queues is None else list(queues)}))
