"""fire_due on real PostgreSQL with an injected clock: exactly-once under racing schedulers, missed-run and
concurrency policies, history limits, and time zones across daylight-saving changes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from waiting import wait_for

from kubetasks.worker import cron, db, queue, scheduler, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.registry import actor
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
H = timedelta(hours=1)


@actor(name="tests.ticked")
def ticked(**kwargs: object) -> object:
    return kwargs


def make(conn: db.Conn, name: str = "default/s", now: datetime = T0, **overrides: Any) -> dict[str, Any]:
    spec = ScheduleSpec.model_validate({"actor": "tests.ticked", "schedule": "0 * * * *", **overrides})
    return schedules.apply(conn, name, spec, now=now)


def runs(conn: db.Conn, name: str = "default/s") -> list[queue.Task]:
    return list(reversed(schedules.history(conn, name, limit=1000)))


def finish(conn: db.Conn, task_id: int, state: str = "successful") -> None:
    conn.execute("UPDATE kubetasks.tasks SET state=%s, finished_at=now() WHERE id=%s", (state, task_id))


def test_due_schedule_fires_its_tick_once_and_advances(conn: db.Conn, settings: Settings) -> None:
    make(conn)
    assert scheduler.fire_due(conn, settings, now=T0 + timedelta(minutes=30)) == []  # not due yet
    at = datetime(2030, 1, 7, 11, 0, 4, tzinfo=UTC)
    ids = scheduler.fire_due(conn, settings, now=at)
    assert len(ids) == 1
    task = queue.get_task(conn, ids[0])
    assert (task.actor, task.schedule_name, task.schedule_tick, task.state) == (
        "tests.ticked", "default/s", datetime(2030, 1, 7, 11, tzinfo=UTC), "queued")
    row = schedules.get(conn, "default/s")
    assert (row["next_run"], row["last_run"]) == (datetime(2030, 1, 7, 12, tzinfo=UTC), at)
    assert scheduler.fire_due(conn, settings, now=at) == []


def test_run_carries_the_schedule_options(conn: db.Conn, settings: Settings) -> None:
    make(conn, args={"x": [1]}, queue="reports", priority=7, timeLimitSeconds=12.5, retries={"limit": 0})
    [task_id] = scheduler.fire_due(conn, settings, now=T0 + H)
    task = queue.get_task(conn, task_id)
    assert (task.args, task.queue, task.priority, task.time_limit, task.max_retries) == (
        {"x": [1]}, "reports", 7, 12.5, 0)


def test_run_carries_the_schedule_retry_backoff(conn: db.Conn, settings: Settings) -> None:
    # What 0002's retry_backoff column is for: each run's retries wait that long first.
    make(conn, retries={"limit": 2, "backoffSeconds": 7.5})
    [task_id] = scheduler.fire_due(conn, settings, now=T0 + H)
    assert queue.get_task(conn, task_id).retry_backoff == 7.5


@pytest.mark.slow
def test_two_schedulers_racing_fire_each_tick_exactly_once(dsn: str, conn: db.Conn, settings: Settings,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    for i in range(200):
        make(conn, f"default/s{i:03d}", schedule="*/5 * * * *")
    due = datetime(2030, 1, 7, 10, 5, 1, tzinfo=UTC)
    results: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(slot: int) -> None:
        try:
            with db.connect(dsn) as own:
                barrier.wait()
                results[slot] = scheduler.fire_due(own, settings, now=due)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Row locks keep the schedulers apart; without them the unique tick index would still hold, but a
    # scheduler would collide and roll back (logged as an error).
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    both = results[0] + results[1]
    assert len(both) == 200 and len(set(both)) == 200
    ticks = conn.execute("SELECT schedule_name, count(*) AS n, min(schedule_tick) AS tick FROM kubetasks.tasks"
                         " GROUP BY schedule_name").fetchall()
    assert len(ticks) == 200
    assert {(r["n"], r["tick"]) for r in ticks} == {(1, datetime(2030, 1, 7, 10, 5, tzinfo=UTC))}
    assert {r["next_run"] for r in schedules.list_schedules(conn)} == {datetime(2030, 1, 7, 10, 10, tzinfo=UTC)}


def test_a_tick_that_already_has_a_run_is_not_fired_again(conn: db.Conn, settings: Settings) -> None:
    # The unique index is the backstop: even if next_run were set back, a tick fires at most once.
    make(conn)
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    conn.execute("UPDATE kubetasks.schedules SET next_run = %s", (datetime(2030, 1, 7, 11, tzinfo=UTC),))
    assert scheduler.fire_due(conn, settings, now=T0 + H) == []
    assert [t.id for t in runs(conn)] == [first]
    assert schedules.get(conn, "default/s")["next_run"] == datetime(2030, 1, 7, 12, tzinfo=UTC)


def test_run_once_fires_one_run_for_all_missed_ticks(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="RunOnce")  # next_run 11:00
    back = datetime(2030, 1, 7, 13, 30, tzinfo=UTC)  # 11:00, 12:00 and 13:00 were missed
    ids = scheduler.fire_due(conn, settings, now=back)
    assert [t.schedule_tick for t in runs(conn)] == [datetime(2030, 1, 7, 13, tzinfo=UTC)]
    assert len(ids) == 1
    assert schedules.get(conn, "default/s")["next_run"] == datetime(2030, 1, 7, 14, tzinfo=UTC)


def test_run_once_respects_starting_deadline(conn: db.Conn, settings: Settings) -> None:
    make(conn, startingDeadlineSeconds=600)
    assert scheduler.fire_due(conn, settings, now=datetime(2030, 1, 7, 13, 30, tzinfo=UTC)) == []
    assert schedules.get(conn, "default/s")["next_run"] == datetime(2030, 1, 7, 14, tzinfo=UTC)
    [task_id] = scheduler.fire_due(conn, settings, now=datetime(2030, 1, 7, 14, 10, tzinfo=UTC))
    assert queue.get_task(conn, task_id).schedule_tick == datetime(2030, 1, 7, 14, tzinfo=UTC)
    assert scheduler.fire_due(conn, settings, now=datetime(2030, 1, 7, 15, 10, 1, tzinfo=UTC)) == []


def test_skip_drops_missed_ticks_but_fires_on_time(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="Skip")
    assert scheduler.fire_due(conn, settings, now=datetime(2030, 1, 7, 13, 30, tzinfo=UTC)) == []
    assert runs(conn) == []
    assert schedules.get(conn, "default/s")["next_run"] == datetime(2030, 1, 7, 14, tzinfo=UTC)
    # Back right at a tick: the earlier missed ones are dropped, the current one runs.
    conn.execute("UPDATE kubetasks.schedules SET next_run = %s", (datetime(2030, 1, 7, 11, tzinfo=UTC),))
    [task_id] = scheduler.fire_due(conn, settings, now=datetime(2030, 1, 7, 14, 0, 20, tzinfo=UTC))
    assert queue.get_task(conn, task_id).schedule_tick == datetime(2030, 1, 7, 14, tzinfo=UTC)


def test_forbid_skips_ticks_while_a_run_is_live(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="Forbid")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    conn.execute("UPDATE kubetasks.tasks SET state='running', worker='w1' WHERE id=%s", (first,))
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []
    assert schedules.get(conn, "default/s")["next_run"] == datetime(2030, 1, 7, 13, tzinfo=UTC)
    conn.execute("UPDATE kubetasks.tasks SET state='successful', worker=NULL, finished_at=now() WHERE id=%s",
                 (first,))
    [second] = scheduler.fire_due(conn, settings, now=T0 + 3 * H)
    assert [t.id for t in runs(conn)] == [first, second]


def test_replace_cancels_the_live_run_and_starts_a_new_one(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="Replace")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    [second] = scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    old = queue.get_task(conn, first)
    assert (old.state, queue.get_task(conn, second).state) == ("cancelled", "queued")
    assert old.error is not None and "replaced" in old.error


def test_allow_runs_alongside(conn: db.Conn, settings: Settings) -> None:
    make(conn)
    scheduler.fire_due(conn, settings, now=T0 + H)
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    assert [t.state for t in runs(conn)] == ["queued", "queued"]


def test_deduplicate_skips_the_tick_while_the_previous_run_is_live(conn: db.Conn, settings: Settings) -> None:
    make(conn, deduplicate=True)
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []
    finish(conn, first)
    assert len(scheduler.fire_due(conn, settings, now=T0 + 3 * H)) == 1


def test_history_limits_prune_old_finished_runs(conn: db.Conn, settings: Settings) -> None:
    make(conn, successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1)
    ids = []
    for hour in range(1, 7):
        [task_id] = scheduler.fire_due(conn, settings, now=T0 + hour * H)
        ids.append(task_id)
    # Runs 1-3 succeed, 4-5 fail, 6 is still queued.
    for task_id in ids[:3]:
        finish(conn, task_id)
    for task_id in ids[3:5]:
        finish(conn, task_id, "error")
    [latest] = scheduler.fire_due(conn, settings, now=T0 + 7 * H)
    assert [t.id for t in runs(conn)] == [ids[1], ids[2], ids[4], ids[5], latest]


def test_last_success_survives_pruning_to_zero(conn: db.Conn, settings: Settings) -> None:
    make(conn, successfulRunsHistoryLimit=0)
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    finish(conn, first)
    finished_at = queue.get_task(conn, first).finished_at
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    assert first not in [t.id for t in runs(conn)]
    assert schedules.get(conn, "default/s")["last_success"] == finished_at


def test_paused_schedules_do_not_fire(conn: db.Conn, settings: Settings) -> None:
    make(conn, "default/on")
    make(conn, "default/off", suspend=True)
    ids = scheduler.fire_due(conn, settings, now=T0 + H)
    assert [queue.get_task(conn, i).schedule_name for i in ids] == ["default/on"]


def fire_every(conn: db.Conn, settings: Settings, start: datetime, end: datetime,
               step: timedelta = timedelta(minutes=5)) -> None:
    at = start
    while at <= end:
        scheduler.fire_due(conn, settings, now=at)
        at += step


def local_ticks(conn: db.Conn, zone: str, name: str = "default/s") -> list[str]:
    return [t.schedule_tick.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M %Z")
            for t in runs(conn, name) if t.schedule_tick is not None]


def test_spring_forward_daily_job_in_the_gap_runs_once_at_the_end_of_it(conn: db.Conn,
                                                                         settings: Settings) -> None:
    start = datetime(2030, 3, 29, 12, tzinfo=UTC)  # Europe/Berlin jumps 02:00 -> 03:00 on 2030-03-31
    make(conn, now=start, schedule="30 2 * * *", timeZone="Europe/Berlin")
    fire_every(conn, settings, start, datetime(2030, 4, 2, 12, tzinfo=UTC))
    assert local_ticks(conn, "Europe/Berlin") == [
        "03-30 02:30 CET", "03-31 03:00 CEST", "04-01 02:30 CEST", "04-02 02:30 CEST"]


def test_fall_back_daily_job_in_the_repeated_hour_runs_once(conn: db.Conn, settings: Settings) -> None:
    start = datetime(2030, 10, 25, 12, tzinfo=UTC)  # Europe/Berlin goes 03:00 -> 02:00 on 2030-10-27
    make(conn, now=start, schedule="30 2 * * *", timeZone="Europe/Berlin")
    fire_every(conn, settings, start, datetime(2030, 10, 28, 12, tzinfo=UTC))
    assert local_ticks(conn, "Europe/Berlin") == ["10-26 02:30 CEST", "10-27 02:30 CEST", "10-28 02:30 CET"]


def test_fall_back_hourly_job_runs_in_both_repeated_hours(conn: db.Conn, settings: Settings) -> None:
    start = datetime(2030, 10, 26, 22, 30, tzinfo=UTC)  # 00:30 CEST
    make(conn, now=start, schedule="0 * * * *", timeZone="Europe/Berlin")
    fire_every(conn, settings, start, datetime(2030, 10, 27, 3, 30, tzinfo=UTC))
    assert local_ticks(conn, "Europe/Berlin") == [
        "10-27 01:00 CEST", "10-27 02:00 CEST", "10-27 02:00 CET", "10-27 03:00 CET", "10-27 04:00 CET"]


def test_time_zone_shifts_utc_times_across_dst(conn: db.Conn, settings: Settings) -> None:
    start = datetime(2030, 3, 8, 12, tzinfo=UTC)  # America/New_York springs forward on 2030-03-10
    make(conn, now=start, schedule="0 9 * * *", timeZone="America/New_York")
    fire_every(conn, settings, start, datetime(2030, 3, 11, 15, tzinfo=UTC), step=timedelta(minutes=30))
    assert [t.schedule_tick for t in runs(conn)] == [
        datetime(2030, 3, 8, 14, tzinfo=UTC), datetime(2030, 3, 9, 14, tzinfo=UTC),  # 09:00 EST
        datetime(2030, 3, 10, 13, tzinfo=UTC), datetime(2030, 3, 11, 13, tzinfo=UTC)]  # 09:00 EDT


def test_tick_helpers_jump_over_long_outages() -> None:
    first = datetime(2030, 1, 1, tzinfo=UTC)
    now = datetime(2030, 3, 1, 0, 0, 30, tzinfo=UTC)  # ~85k minutely ticks later
    tick, missed = cron.latest_due("* * * * *", "UTC", first, now)
    assert tick == datetime(2030, 3, 1, tzinfo=UTC) and missed >= 1000
    assert cron.prev_tick("0 * * * *", "UTC", datetime(2030, 1, 1, 5, tzinfo=UTC)) == datetime(
        2030, 1, 1, 5, tzinfo=UTC)


def test_a_broken_schedule_does_not_stop_the_others(conn: db.Conn, settings: Settings,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    make(conn, "default/good")
    # A row no manifest could produce (written by hand, or by an older version): croniter refuses it.
    conn.execute("INSERT INTO kubetasks.schedules (name, actor, cron, next_run) VALUES"
                 " ('default/broken', 'tests.ticked', 'not a cron', %s)", (datetime(2030, 1, 7, 9, tzinfo=UTC),))
    [task_id] = scheduler.fire_due(conn, settings, now=T0 + H)
    assert queue.get_task(conn, task_id).schedule_name == "default/good"
    assert any("default/broken: firing failed" in r.getMessage() for r in caplog.records)
    assert runs(conn, "default/broken") == []


def test_firing_service_sleeps_until_the_next_due_schedule_at_most_an_interval(conn: db.Conn,
                                                                              settings: Settings) -> None:
    service = scheduler.FiringService(settings, interval=60.0)
    assert service.next_wait(conn) == 60.0  # nothing scheduled
    make(conn, now=datetime.now(UTC))
    conn.execute("UPDATE kubetasks.schedules SET next_run = now() + interval '10 seconds'")
    assert 9.0 < service.next_wait(conn) <= 10.0
    assert scheduler.FiringService(settings, interval=2.0).next_wait(conn) == 2.0


def test_firing_service_does_not_wake_at_once_for_a_schedule_that_just_failed(
        conn: db.Conn, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    conn.execute("INSERT INTO kubetasks.schedules (name, actor, cron, next_run) VALUES"
                 " ('default/broken', 'tests.ticked', 'not a cron', now() - interval '1 hour')")
    service = scheduler.FiringService(settings, interval=30.0)
    assert service.next_wait(conn) == scheduler.MIN_WAIT  # overdue, not tried yet
    assert service.run_due(conn) == []
    assert any("default/broken: firing failed" in r.getMessage() for r in caplog.records)
    assert service.next_wait(conn) == 30.0  # retried after an interval, not every MIN_WAIT


def test_firing_service_serves_passes_until_stopped(dsn: str, conn: db.Conn, settings: Settings) -> None:
    make(conn, now=datetime.now(UTC))
    conn.execute("UPDATE kubetasks.schedules SET next_run = now() + interval '0.3 seconds'")
    service = scheduler.FiringService(settings, interval=60.0)
    stopping = threading.Event()
    thread = threading.Thread(target=service.serve, args=(lambda: db.connect(dsn), stopping))
    thread.start()
    try:
        wait_for(lambda: service.fired == 1, timeout=5, what="the run, on time rather than an interval later")
    finally:
        stopping.set()
        thread.join(5)
    assert not thread.is_alive()
    assert [t.schedule_name for t in runs(conn)] == ["default/s"]


def test_many_due_schedules_fire_in_batches_each_tick_once(conn: db.Conn, settings: Settings) -> None:
    n = scheduler.FIRE_BATCH * 2 + 7
    for k in range(n):
        make(conn, name=f"default/b{k}", args={"k": k},
             concurrencyPolicy="Forbid" if k % 3 == 0 else "Allow", deduplicate=k % 5 == 0)
    at = T0 + H
    ids = scheduler.fire_due(conn, settings, now=at)
    assert len(ids) == len(set(ids)) == n
    names = {queue.get_task(conn, i).schedule_name for i in ids}
    assert names == {f"default/b{k}" for k in range(n)}
    assert scheduler.fire_due(conn, settings, now=at) == []  # every next_run advanced
    # The next tick: Forbid and deduplicate schedules skip it (their runs are still queued), the rest fire.
    later = scheduler.fire_due(conn, settings, now=at + H)
    assert len(later) == sum(1 for k in range(n) if k % 3 and k % 5)


def test_a_batch_that_fails_is_fired_one_by_one(conn: db.Conn, settings: Settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(5):
        make(conn, name=f"default/f{k}")

    def broken(*args: object, **kwargs: object) -> list[int]:
        raise RuntimeError("boom")

    monkeypatch.setattr(scheduler, "_fire_many", broken)
    assert len(scheduler.fire_due(conn, settings, now=T0 + H)) == 5
