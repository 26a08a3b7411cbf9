"""missedRunPolicy CatchUp and backfill on real PostgreSQL with an injected clock, raced by two schedulers:
each tick inside the window (or the range) gets exactly one run, oldest first, bounded by the count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from kubetasks.worker import db, queue, scheduler, schedules
from kubetasks.worker.errors import InvalidInput
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
M = timedelta(minutes=1)
R = TypeVar("R")


def make(conn: db.Conn, name: str = "default/s", **overrides: Any) -> dict[str, Any]:
    spec = ScheduleSpec.model_validate({"actor": "tests.catchup", "schedule": "*/10 * * * *", **overrides})
    return schedules.apply(conn, name, spec, now=T0, validate_actor=False)


def ticks(conn: db.Conn, name: str = "default/s") -> list[datetime]:
    rows = conn.execute("SELECT schedule_tick FROM kubetasks.tasks WHERE schedule_name = %s ORDER BY id", (name,))
    return [r["schedule_tick"] for r in rows]


def at(hour: int, minute: int) -> datetime:
    return datetime(2030, 1, 7, hour, minute, tzinfo=UTC)


def race(dsn: str, work: Callable[[db.Conn], R]) -> list[R]:
    """`work` on two connections at once (released together by a barrier); both results."""
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(slot: int) -> None:
        try:
            with db.connect(dsn) as own:
                barrier.wait()
                results[slot] = work(own)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


def test_catch_up_fires_each_missed_tick_inside_the_window_once_across_a_3_hour_outage_of_two_schedulers(
        dsn: str, conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="CatchUp", catchupWindow="2h")  # ticks every 10 minutes from 10:10
    for minute in range(5, 35, 5):  # both schedulers up: every tick on time, once
        race(dsn, lambda own, m=minute: scheduler.fire_due(own, settings, now=at(10, m)))
    assert ticks(conn) == [at(10, 10), at(10, 20), at(10, 30)]
    # Both down from 10:35 to 13:35: 10:40 … 13:30 (18 ticks) missed; back at once, racing.
    back = at(13, 35)
    created = race(dsn, lambda own: scheduler.fire_due(own, settings, now=back))
    inside = [back - timedelta(hours=2) + timedelta(minutes=5) + k * 10 * M for k in range(12)]  # 11:40 … 13:30
    assert sorted(created[0] + created[1]) == sorted(set(created[0] + created[1]))
    assert ticks(conn)[3:] == inside  # exactly the ticks inside the window, once each, oldest first
    assert len(created[0]) + len(created[1]) == 12
    assert schedules.get(conn, "default/s")["next_run"] == at(13, 40)
    assert race(dsn, lambda own: scheduler.fire_due(own, settings, now=back)) == [[], []]
    assert len(scheduler.fire_due(conn, settings, now=at(13, 40))) == 1  # and on time again


def test_catch_up_is_bounded_by_max_catchup_runs_keeping_the_newest(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="CatchUp", catchupWindow="6h", maxCatchupRuns=5)
    ids = scheduler.fire_due(conn, settings, now=at(13, 35))
    assert len(ids) == 5
    assert ticks(conn) == [at(12, 50), at(13, 0), at(13, 10), at(13, 20), at(13, 30)]
    assert [queue.get_task(conn, i).schedule_tick for i in ids] == ticks(conn)  # enqueued oldest first


def test_catch_up_goes_through_the_overlap_policy(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="CatchUp", catchupWindow="1h", concurrencyPolicy="BufferAll")
    assert len(scheduler.fire_due(conn, settings, now=at(11, 5))) == 1  # 10:10 … 11:00: one runs,
    states = [(t.schedule_tick, t.reason) for t in reversed(schedules.history(conn, "default/s"))]
    assert states == [(at(10, 10), "Queued")] + [(at(10, 10) + k * 10 * M, "Buffered") for k in range(1, 6)]
    make(conn, "default/f", missedRunPolicy="CatchUp", catchupWindow="1h", concurrencyPolicy="Forbid")
    scheduler.fire_due(conn, settings, now=at(11, 5))
    assert ticks(conn, "default/f") == [at(10, 10)]  # the rest come while that run is live: skipped


def test_catch_up_without_a_tick_inside_the_window_fires_nothing(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="CatchUp", catchupWindow="5m")
    assert scheduler.fire_due(conn, settings, now=at(10, 17)) == []
    assert schedules.get(conn, "default/s")["next_run"] == at(10, 20)


def test_backfill_starts_each_tick_in_the_range_once_even_when_run_twice_at_once(
        dsn: str, conn: db.Conn, settings: Settings) -> None:
    make(conn, schedule="0 * * * *")
    first, last = datetime(2030, 1, 6, 0, tzinfo=UTC), datetime(2030, 1, 6, 5, tzinfo=UTC)
    done = race(dsn, lambda own: scheduler.backfill(own, "default/s", first, last, settings, now=T0))
    wanted = [first + timedelta(hours=k) for k in range(6)]
    assert ticks(conn) == wanted
    assert sorted(len(d.started.created) for d in done) == [0, 6]  # the second waited, then found them all
    assert sorted(len(d.existing) for d in done) == [0, 6]
    again = scheduler.backfill(conn, "default/s", first - timedelta(hours=2), last, settings, now=T0)
    assert (len(again.ticks), len(again.existing), len(again.started.created)) == (8, 6, 2)
    assert sorted(ticks(conn)) == [first - timedelta(hours=2), first - timedelta(hours=1), *wanted]


def test_backfill_respects_the_overlap_policy(conn: db.Conn, settings: Settings) -> None:
    first, last = datetime(2030, 1, 6, 0, tzinfo=UTC), datetime(2030, 1, 6, 3, tzinfo=UTC)
    make(conn, "default/forbid", schedule="0 * * * *", concurrencyPolicy="Forbid")
    done = scheduler.backfill(conn, "default/forbid", first, last, settings, now=T0)
    assert (len(done.started.created), len(done.started.skipped)) == (1, 3)
    make(conn, "default/buffer", schedule="0 * * * *", concurrencyPolicy="BufferAll")
    done = scheduler.backfill(conn, "default/buffer", first, last, settings, now=T0)
    assert (len(done.started.created), len(done.started.buffered)) == (1, 3)


@pytest.mark.parametrize(("first", "last", "field", "problem"), [
    (datetime(2030, 1, 6, 5, tzinfo=UTC), datetime(2030, 1, 6, 0, tzinfo=UTC), "to", "is before from"),
    (datetime(2030, 1, 6, tzinfo=UTC), datetime(2030, 2, 6, tzinfo=UTC), "to", "is in the future"),
    (datetime(2029, 1, 6, tzinfo=UTC), datetime(2030, 1, 6, tzinfo=UTC), "to", "more than 1000 ticks"),
])
def test_bad_backfill_ranges_name_the_field(conn: db.Conn, settings: Settings, first: datetime, last: datetime,
                                            field: str, problem: str) -> None:
    make(conn, schedule="0 * * * *")
    with pytest.raises(InvalidInput) as info:
        scheduler.backfill(conn, "default/s", first, last, settings, now=T0)
    assert info.value.field == field and problem in info.value.problem and info.value.fix
    assert ticks(conn) == []


def test_backfill_annotation_values_parse_or_name_the_annotation() -> None:
    assert scheduler.parse_range("2030-01-06T00:00:00Z/2030-01-06T05:00:00+01:00") == (
        datetime(2030, 1, 6, tzinfo=UTC), datetime(2030, 1, 6, 4, tzinfo=UTC))
    with pytest.raises(InvalidInput, match=r"kubetasks\.dev/backfill"):
        scheduler.parse_range("2030-01-06")


def test_tick_fired_runs_carry_the_schedule_notification_rules(conn: db.Conn, settings: Settings) -> None:
    make(conn, notifications=[{"events": ["failed"], "webhook": {"url": "http://127.0.0.1:9/hook"}}])
    [task_id] = scheduler.fire_due(conn, settings, now=at(10, 10))
    row = conn.execute("SELECT notify FROM kubetasks.tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None and row["notify"][0]["events"] == ["failed"]
