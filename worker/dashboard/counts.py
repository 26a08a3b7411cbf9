"""The dashboard's counts: the overview page (cached a few seconds), queue depth with each queue's controls
(paused, limits, tasks they hold back) and the namespaces holding tasks, each read through an index rather than
a scan of the task table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import controls, db, protocol, queue
from ..db import Conn
from . import queries


@dataclass
class _Cached:
    at: float
    value: dict[str, Any]


_overview_cache: dict[str, _Cached] = {}


def overview(conn: Conn, *, max_age: float = 5.0, now: datetime | None = None) -> dict[str, Any]:
    """Counts for the overview page, none of them a scan of the whole table: live tasks (the claim index's
    rows), finished in the last hour and day (ranges of tasks_finished), a per-minute throughput series, queue
    depth, and the planner's estimate of the table size. Cached for `max_age` seconds per database."""
    key = conn.info.dsn
    cached = _overview_cache.get(key)
    if cached is not None and time.monotonic() - cached.at < max_age:
        return cached.value
    at = now or db.now(conn)
    hour, day = at - timedelta(hours=1), at - timedelta(days=1)
    value = {
        "at": at.isoformat(),
        "live": list(conn.execute(queries.get("live_counts"))),
        "last_hour": list(conn.execute(queries.get("finished_counts"), {"since": hour})),
        "last_day": list(conn.execute(queries.get("finished_counts"), {"since": day})),
        "throughput": [{"minute": r["minute"].isoformat(), "ok": r["ok"], "failed": r["failed"]}
                       for r in conn.execute(queries.get("throughput"), {"since": hour})],
        "queues": queue_depth(conn),
        "table_estimate": _estimate(conn),
        "states": list(protocol.STATES),
    }
    _overview_cache[key] = _Cached(time.monotonic(), value)
    return value


def forget_overview() -> None:
    """After a change the overview shows (a queue paused or resumed), so the next read is not a stale copy."""
    _overview_cache.clear()


def queue_depth(conn: Conn) -> list[dict[str, Any]]:
    """Depth per queue with its controls; a paused or limited queue is listed even while it holds no task."""
    found = {c.name: c for c in controls.list_controls(conn)}
    rows = {r["queue"]: {**r, "held": 0} for r in queue.queue_depth(conn)}
    for name in found:
        rows.setdefault(name, {"queue": name, "runnable": 0, "delayed": 0, "executing": 0, "held": 0})
    if found:
        for r in controls.startable(conn, list(found)):
            rows[r["queue"]]["held"] = int(r["runnable"]) - int(r["startable"])
    return [{**row, **control_fields(found.get(name) or controls.QueueControl(name))}
            for name, row in sorted(rows.items())]


def control_fields(control: controls.QueueControl) -> dict[str, Any]:
    fields = control.as_json()
    del fields["name"]
    return fields


def _estimate(conn: Conn) -> int:
    row = conn.execute(queries.get("table_estimate")).fetchone()
    return int(row["estimate"]) if row else 0


def namespaces(conn: Conn) -> list[str]:
    return [row["name"] for row in conn.execute(queries.get("task_namespaces"))]
