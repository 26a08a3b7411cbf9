"""Jitter, startTime / endTime and plain intervals (`every`) on real PostgreSQL with an injected clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetasks.worker import cron, db, queue, scheduler, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
M = timedelta(minutes=1)


def make(conn: db.Conn, name: str = "default/s", **overrides: Any) -> dict[str, Any]:
    spec = ScheduleSpec.model_validate({"actor": "tests.timing", **overrides})
    return schedules.apply(conn, name, spec, now=T0, validate_actor=False)


def at(hour: int, minute: int, day: int = 7) -> datetime:
    return datetime(2030, 1, day, hour, minute, tzinfo=UTC)


def fire_every(conn: db.Conn, settings: Settings, start: datetime, end: datetime, step: timedelta = 5 * M) -> None:
    now = start
    while now <= end:
        scheduler.fire_due(conn, settings, now=now)
        now += step


def runs(conn: db.Conn, name: str = "default/s") -> list[queue.Task]:
    return list(reversed(schedules.history(conn, name, limit=1000)))


def test_jitter_delays_each_run_within_bounds_and_keeps_the_nominal_tick(conn: db.Conn,
                                                                        settings: Settings) -> None:
    make(conn, schedule="* * * * *", jitter="30s")
    fire_every(conn, settings, at(10, 1), at(11, 0), step=M)
    fired = runs(conn)
    assert len(fired) == 60
    delays = [(t.eta - t.schedule_tick).total_seconds() for t in fired if t.schedule_tick]
    assert all(t.schedule_tick is not None and t.schedule_tick.second == 0 for t in fired)  # nominal minute
    assert all(0 <= d <= 30 for d in delays)
    assert len({round(d) for d in delays}) > 10  # spread out, not one constant delay
    assert delays == [cron.jitter_delay("default/s", t.schedule_tick, 30).total_seconds()
                      for t in fired if t.schedule_tick]


def test_jitter_is_identical_whichever_scheduler_fires_the_tick(dsn: str, conn: db.Conn,
                                                               settings: Settings) -> None:
    make(conn, schedule="0 * * * *", jitter="10m")
    with db.connect(dsn) as first, first.transaction(force_rollback=True):  # one scheduler fires, then dies
        [task_id] = scheduler.fire_due(first, settings, now=at(11, 0) + 5 * M)
        eta_first = queue.get_task(first, task_id).eta
    [task_id] = scheduler.fire_due(conn, settings, now=at(11, 0) + 9 * M)  # another, later, fires it again
    assert queue.get_task(conn, task_id).eta == eta_first
    # In another process (its own hash seed) the delays are the same: a hash of (schedule, tick), not hash().
    ticks = [at(h, 0).isoformat() for h in range(24)]
    code = ("import json, sys; from datetime import datetime; from kubetasks.worker import cron; print(json.dumps("
            "[cron.jitter_delay('default/s', datetime.fromisoformat(t), 600).total_seconds() for t in sys.argv[1:]]))")
    other = subprocess.run([sys.executable, "-c", code, *ticks], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(other) == [cron.jitter_delay("default/s", datetime.fromisoformat(t), 600).total_seconds()
                                 for t in ticks]


def test_no_runs_outside_start_and_end_time(conn: db.Conn, settings: Settings) -> None:
    row = make(conn, schedule="*/10 * * * *", startTime="2030-01-07T10:30:00Z", endTime="2030-01-07T11:00:00Z")
    assert row["next_run"] == at(10, 30)
    fire_every(conn, settings, at(10, 0), at(12, 0))
    assert [t.schedule_tick for t in runs(conn)] == [at(10, 30), at(10, 40), at(10, 50), at(11, 0)]
    assert schedules.get(conn, "default/s")["next_run"] is None  # done: no tick after endTime


def test_catch_up_never_reaches_before_start_time(conn: db.Conn, settings: Settings) -> None:
    make(conn, schedule="*/10 * * * *", startTime="2030-01-07T10:45:00+00:00", missedRunPolicy="CatchUp",
         catchupWindow="3h")
    scheduler.fire_due(conn, settings, now=at(11, 25))
    assert [t.schedule_tick for t in runs(conn)] == [at(10, 50), at(11, 0), at(11, 10), at(11, 20)]


def test_every_ticks_at_whole_intervals_since_the_epoch(conn: db.Conn, settings: Settings) -> None:
    row = make(conn, every="90m")
    assert row["cron"] == "@every 1h30m"
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = [epoch + ((at(10, 0) - epoch) // timedelta(minutes=90) + k) * timedelta(minutes=90)
                for k in range(1, 5)]
    fire_every(conn, settings, at(10, 5), expected[-1] + M)
    assert [t.schedule_tick for t in runs(conn)] == expected
    assert schedules.spec_of(schedules.get(conn, "default/s")).every == "1h30m"


def test_every_is_anchored_at_start_time(conn: db.Conn, settings: Settings) -> None:
    make(conn, every="1h30m", startTime="2030-01-07T10:15:00Z")
    fire_every(conn, settings, at(10, 5), at(14, 0))
    assert [t.schedule_tick for t in runs(conn)] == [at(10, 15), at(11, 45), at(13, 15)]
