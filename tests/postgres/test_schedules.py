"""Schedule store operations on real PostgreSQL: apply, get/list, pause, resume, trigger, delete, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetasks.worker import db, queue, scheduler, schedules
from kubetasks.worker.errors import InvalidInput, UnknownActor
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.registry import actor
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)  # a Monday, 30 s past the hour


@actor(name="tests.scheduled")
def scheduled(**kwargs: object) -> object:
    return kwargs


def spec(**overrides: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"actor": "tests.scheduled", "schedule": "0 * * * *", **overrides})


def count(conn: db.Conn, table: str = "schedules") -> int:
    row = conn.execute(f"SELECT count(*) AS n FROM kubetasks.{table}").fetchone()
    assert row is not None
    return int(row["n"])


def test_apply_creates_then_reports_unchanged_and_configured(conn: db.Conn) -> None:
    created = schedules.apply(conn, "default/hourly", spec(args={"x": 1}), now=T0)
    assert created["action"] == "created"
    assert created["next_run"] == datetime(2030, 1, 7, 11, tzinfo=UTC)
    assert (created["actor"], created["args"], created["cron"], created["paused"]) == (
        "tests.scheduled", {"x": 1}, "0 * * * *", False)

    again = schedules.apply(conn, "default/hourly", spec(args={"x": 1}), now=T0 + timedelta(minutes=30))
    assert again["action"] == "unchanged" and again["next_run"] == created["next_run"]

    # A change that is not about time keeps the pending tick.
    changed = schedules.apply(conn, "default/hourly", spec(args={"x": 2}, priority=5),
                              now=T0 + timedelta(minutes=30))
    assert (changed["action"], changed["args"], changed["priority"]) == ("configured", {"x": 2}, 5)
    assert changed["next_run"] == created["next_run"]


def test_changing_cron_or_time_zone_recomputes_next_run(conn: db.Conn) -> None:
    schedules.apply(conn, "default/s", spec(), now=T0)
    daily = schedules.apply(conn, "default/s", spec(schedule="30 2 * * *"), now=T0)
    assert daily["next_run"] == datetime(2030, 1, 8, 2, 30, tzinfo=UTC)
    berlin = schedules.apply(conn, "default/s", spec(schedule="30 2 * * *", timeZone="Europe/Berlin"), now=T0)
    assert berlin["next_run"] == datetime(2030, 1, 8, 1, 30, tzinfo=UTC)  # 02:30 CET is 01:30 UTC


@pytest.mark.parametrize(("name", "overrides", "field"), [
    ("default/s", {"actor": "tests.nope"}, "spec.actor"),
    ("no-namespace", {}, "name"),
    ("Default/s", {}, "name"),
    ("default/s", {"args": {"blob": "x" * (1024 * 1024)}}, "spec.args"),
])
def test_bad_apply_names_the_field_and_stores_nothing(conn: db.Conn, name: str, overrides: dict[str, Any],
                                                      field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        schedules.apply(conn, name, spec(**overrides), now=T0)
    assert info.value.field == field
    assert count(conn) == 0


def test_unknown_actor_is_allowed_when_not_validated(conn: db.Conn) -> None:
    with pytest.raises(UnknownActor):
        schedules.apply(conn, "default/s", spec(actor="elsewhere.defined"), now=T0)
    row = schedules.apply(conn, "default/s", spec(actor="elsewhere.defined"), validate_actor=False, now=T0)
    assert row["actor"] == "elsewhere.defined"


def test_spec_round_trips_through_the_row(conn: db.Conn) -> None:
    wanted = spec(args={"a": [1, 2]}, queue="q", timeZone="Asia/Tokyo", concurrencyPolicy="Forbid",
                  missedRunPolicy="Skip", startingDeadlineSeconds=30, timeLimitSeconds=2.5,
                  retries={"limit": 2, "backoffSeconds": 0.5}, deduplicate=True, priority=-3,
                  successfulRunsHistoryLimit=7, failedRunsHistoryLimit=0, suspend=True)
    row = schedules.apply(conn, "ns/s", wanted, now=T0)
    assert schedules.spec_of(row) == wanted


def test_get_list_and_last_success_from_finished_runs(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/b", spec(), now=T0)
    schedules.apply(conn, "default/a", spec(), now=T0)
    assert [s["name"] for s in schedules.list_schedules(conn)] == ["default/a", "default/b"]
    assert schedules.get(conn, "default/a")["last_success"] is None

    task = schedules.trigger(conn, "default/a", settings=settings)
    assert schedules.get(conn, "default/a")["active_runs"] == 1
    conn.execute("UPDATE kubetasks.tasks SET state='successful', finished_at=%s WHERE id=%s",
                 (T0 + timedelta(minutes=5), task.id))
    got = schedules.get(conn, "default/a")
    assert (got["last_success"], got["active_runs"]) == (T0 + timedelta(minutes=5), 0)
    with pytest.raises(schedules.ScheduleNotFound, match="'default/zzz' does not exist"):
        schedules.get(conn, "default/zzz")


def test_pause_keeps_tick_and_stops_firing(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(), now=T0)
    paused = schedules.pause(conn, "default/s")
    assert paused["paused"] and paused["next_run"] == datetime(2030, 1, 7, 11, tzinfo=UTC)
    assert scheduler.fire_due(conn, settings, now=T0 + timedelta(hours=5)) == []
    assert schedules.pause(conn, "default/s")["paused"]  # idempotent
    with pytest.raises(schedules.ScheduleNotFound):
        schedules.pause(conn, "default/missing")


def test_resume_fires_once_at_once_then_waits_for_next_tick(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(), now=T0)
    schedules.pause(conn, "default/s")
    later = T0 + timedelta(hours=5, minutes=10)  # 15:10:30, five ticks missed while paused
    resumed = schedules.resume(conn, "default/s", settings=settings, now=later)
    assert resumed["task_created"] and not resumed["paused"]
    assert resumed["next_run"] == datetime(2030, 1, 7, 16, tzinfo=UTC)
    assert resumed["last_run"] == later
    runs = schedules.history(conn, "default/s")
    assert [(t.id, t.schedule_tick, t.actor) for t in runs] == [(resumed["task_id"], None, "tests.scheduled")]
    # The missed ticks are not caught up afterwards.
    assert scheduler.fire_due(conn, settings, now=later + timedelta(minutes=1)) == []

    with pytest.raises(InvalidInput, match="is not paused"):
        schedules.resume(conn, "default/s", settings=settings, now=later)
    assert len(schedules.history(conn, "default/s")) == 1


def test_trigger_runs_now_even_paused_without_moving_next_run(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(args={"k": "v"}, suspend=True), now=T0)
    before = schedules.get(conn, "default/s")
    task = schedules.trigger(conn, "default/s", settings=settings, now=T0)
    after = schedules.get(conn, "default/s")
    assert (task.created, task.args, task.schedule_name, task.state) == (True, {"k": "v"}, "default/s", "queued")
    assert after["next_run"] == before["next_run"] and after["paused"]
    assert after["last_run"] == T0
    with pytest.raises(schedules.ScheduleNotFound):
        schedules.trigger(conn, "default/missing", settings=settings)


def test_trigger_obeys_deduplicate(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(deduplicate=True), now=T0)
    first = schedules.trigger(conn, "default/s", settings=settings)
    second = schedules.trigger(conn, "default/s", settings=settings)
    assert (second.id, second.created) == (first.id, False)
    assert count(conn, "tasks") == 1


def test_unsuspending_by_apply_does_not_catch_up(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(suspend=True), now=T0)
    later = T0 + timedelta(hours=3)
    row = schedules.apply(conn, "default/s", spec(suspend=False), now=later)
    assert row["next_run"] == datetime(2030, 1, 7, 14, tzinfo=UTC)
    assert scheduler.fire_due(conn, settings, now=later) == []


def test_delete_keeps_history(conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "default/s", spec(), now=T0)
    task = schedules.trigger(conn, "default/s", settings=settings)
    assert schedules.delete(conn, "default/s") is True
    with pytest.raises(schedules.ScheduleNotFound):
        schedules.delete(conn, "default/s")
    assert schedules.delete(conn, "default/s", missing_ok=True) is False
    assert [t.id for t in schedules.history(conn, "default/s")] == [task.id]
    assert queue.get_task(conn, task.id).schedule_name == "default/s"
