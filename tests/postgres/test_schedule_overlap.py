"""Overlap policies BufferOne, BufferAll and CancelOther, and pausing after failed runs, on real PostgreSQL
with an injected clock: runs are finished by UPDATEs of their rows, so the outcome trigger does the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from waiting import wait_for

from kubetasks.worker import db, protocol, queries, queue, scheduler, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
H = timedelta(hours=1)


def make(conn: db.Conn, name: str = "default/s", **overrides: Any) -> dict[str, Any]:
    spec = ScheduleSpec.model_validate({"actor": "tests.overlap", "schedule": "0 * * * *", **overrides})
    return schedules.apply(conn, name, spec, now=T0, validate_actor=False)


def runs(conn: db.Conn, name: str = "default/s") -> list[queue.Task]:
    return list(reversed(schedules.history(conn, name, limit=1000)))


def finish(conn: db.Conn, task_id: int, state: str = "successful") -> None:
    conn.execute("UPDATE kubetasks.tasks SET state=%s, worker=NULL, finished_at=now(), error=%s WHERE id=%s",
                 (state, "boom" if state == "error" else None, task_id))


def start(conn: db.Conn, task_id: int) -> None:
    conn.execute("UPDATE kubetasks.tasks SET state='running', worker='w1', attempts=1, started_at=now() "
                 "WHERE id=%s", (task_id,))


def reasons(conn: db.Conn) -> list[tuple[str, str]]:
    return [(t.state, t.reason) for t in runs(conn)]


def test_buffer_one_queues_one_run_behind_the_live_one_and_skips_further_ticks(conn: db.Conn,
                                                                              settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferOne")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    start(conn, first)
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []  # buffered, not started
    assert scheduler.fire_due(conn, settings, now=T0 + 3 * H) == []  # one is buffered already: skipped
    assert reasons(conn) == [("running", "Queued"), ("queued", "Buffered")]
    waiting = runs(conn)[1]
    assert waiting.eta == scheduler.BUFFERED_ETA and waiting.schedule_tick == datetime(2030, 1, 7, 12, tzinfo=UTC)
    conn.execute(f"LISTEN {protocol.QUEUE_CHANNEL}")
    finish(conn, first)  # the outcome's transaction releases the buffered run and wakes the workers
    released = queue.get_task(conn, waiting.id)
    assert (released.state, released.reason) == ("queued", "Queued")
    assert released.eta <= db.now(conn)
    assert protocol.encode_wakeup("default", waiting.id) in [n.payload for n in conn.notifies(timeout=1,
                                                                                                stop_after=1)]
    assert [t.schedule_tick.hour for t in runs(conn) if t.schedule_tick] == [11, 12]


def test_buffer_all_queues_every_tick_and_releases_them_one_at_a_time_in_order(conn: db.Conn,
                                                                              settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferAll")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    for hour in (2, 3, 4):
        assert scheduler.fire_due(conn, settings, now=T0 + hour * H) == []
    assert reasons(conn) == [("queued", "Queued")] + [("queued", "Buffered")] * 3
    ids = [t.id for t in runs(conn)]
    finish(conn, first, "error")  # a failed run releases the next one too
    assert reasons(conn) == [("error", "Queued"), ("queued", "Queued"), ("queued", "Buffered"),
                             ("queued", "Buffered")]
    start(conn, ids[1])
    finish(conn, ids[1])
    assert [(t.id, t.reason) for t in runs(conn)][2:] == [(ids[2], "Queued"), (ids[3], "Buffered")]


def test_a_cancelled_buffered_run_releases_nothing_while_a_run_is_live(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferAll")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    scheduler.fire_due(conn, settings, now=T0 + 3 * H)
    second, third = (t.id for t in runs(conn)[1:])
    queue.cancel_task(conn, second)
    assert queue.get_task(conn, third).reason == "Buffered"  # the first run is still live
    finish(conn, first)
    assert queue.get_task(conn, third).reason == "Queued"


def test_cancel_other_holds_the_new_run_until_the_cancelled_attempt_is_let_go(dsn: str, conn: db.Conn,
                                                                             settings: Settings) -> None:
    make(conn, concurrencyPolicy="CancelOther")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    with db.connect(dsn) as worker:  # a worker session running `first`, as a worker's claiming connection does
        session = worker.execute(queries.get("worker_session_start")).fetchone()["session"]  # type: ignore[index]
        worker.execute("UPDATE kubetasks.tasks SET state='running', worker='w1', session=%s, attempts=1, "
                       "started_at=now() WHERE id=%s", (session, first))
        assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []
        old, new = runs(conn)
        assert (old.state, new.state, new.reason) == ("cancelled", "queued", "Buffered")
        assert old.error is not None and "replaced (CancelOther)" in old.error
        assert scheduler.release_cancelled_others(conn) == []  # the worker has not acted on the cancel yet
        # It does: the interrupted attempt is recorded (attempt_insert_many), its outcome matches no row.
        worker.execute(queries.get("attempt_insert_many"), {
            "ids": [first], "attempts": [1], "states": ["cancelled"], "reasons": ["Cancelled"], "worker": ["w1"],
            "started": [None], "errors": ["cancelled"], "logs": [""]})
        assert scheduler.release_cancelled_others(conn) == [new.id]
    assert queue.get_task(conn, new.id).reason == "Queued"


def test_cancel_other_releases_the_held_run_once_the_cancelled_runs_worker_is_gone(
        dsn: str, conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="CancelOther")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    worker = db.connect(dsn)
    session = worker.execute(queries.get("worker_session_start")).fetchone()["session"]  # type: ignore[index]
    worker.execute("UPDATE kubetasks.tasks SET state='running', worker='w1', session=%s, attempts=1 WHERE id=%s",
                   (session, first))
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    [held] = [t.id for t in runs(conn) if t.reason == "Buffered"]
    assert scheduler.release_cancelled_others(conn) == []
    pid = worker.info.backend_pid
    worker.close()  # killed before it recorded anything
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_locks WHERE pid = %s", (pid,)).fetchone() == {
        "n": 0}, what="the dead worker's session lock released")
    assert scheduler.release_cancelled_others(conn) == [held]


def test_cancel_other_starts_at_once_when_nothing_is_executing(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="CancelOther")
    assert len(scheduler.fire_due(conn, settings, now=T0 + H)) == 1  # queued, no worker holds it
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    assert reasons(conn) == [("cancelled", "Cancelled"), ("queued", "Queued")]


def test_replace_still_starts_the_new_run_at_once(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="Replace")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    start(conn, first)
    [second] = scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    assert reasons(conn) == [("cancelled", "Cancelled"), ("queued", "Queued")]
    assert runs(conn)[1].id == second


def test_pause_after_failures_pauses_with_the_reason_and_resume_goes_on(conn: db.Conn, settings: Settings) -> None:
    make(conn, pauseAfterFailures=2)
    outcomes = ["error", "successful", "error", "error"]  # a success in between starts the count afresh
    for hour, state in enumerate(outcomes, start=1):
        [task_id] = scheduler.fire_due(conn, settings, now=T0 + hour * H)
        finish(conn, task_id, state)
        row = schedules.get(conn, "default/s")
        assert row["paused"] == (hour == len(outcomes)), hour
    assert row["consecutive_failures"] == 2
    assert row["paused_reason"] == f"2 failed runs in a row (pauseAfterFailures 2); the last, task {task_id}: boom"
    assert scheduler.fire_due(conn, settings, now=T0 + 5 * H) == []
    again = make(conn, pauseAfterFailures=2)  # the operator re-applies the unchanged spec: still paused
    assert again["action"] == "unchanged" and again["paused"]
    resumed = schedules.resume(conn, "default/s", settings=settings, now=T0 + 5 * H)
    assert (resumed["paused"], resumed["paused_reason"], resumed["consecutive_failures"]) == (False, None, 0)
    assert resumed["task_created"]
    assert len(scheduler.fire_due(conn, settings, now=T0 + 6 * H)) == 1


def test_cancelled_runs_neither_count_nor_reset_failures(conn: db.Conn, settings: Settings) -> None:
    make(conn, pauseAfterFailures=2)
    [a] = scheduler.fire_due(conn, settings, now=T0 + H)
    finish(conn, a, "error")
    [b] = scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    queue.cancel_task(conn, b)
    assert schedules.get(conn, "default/s")["consecutive_failures"] == 1
    [c] = scheduler.fire_due(conn, settings, now=T0 + 3 * H)
    finish(conn, c, "error")
    assert schedules.get(conn, "default/s")["paused"]


def test_suspend_by_spec_takes_over_a_pause_after_failures(conn: db.Conn, settings: Settings) -> None:
    make(conn, pauseAfterFailures=1)
    [a] = scheduler.fire_due(conn, settings, now=T0 + H)
    finish(conn, a, "error")
    assert schedules.get(conn, "default/s")["paused_reason"] is not None
    assert make(conn, pauseAfterFailures=1, suspend=True)["paused_reason"] is None  # now the user's pause
    row = make(conn, pauseAfterFailures=1)  # and un-suspending lets it go
    assert (row["paused"], row["consecutive_failures"]) == (False, 0)


def test_many_buffering_schedules_fire_in_one_batch(conn: db.Conn, settings: Settings) -> None:
    n = scheduler.FIRE_BATCH + 20
    for k in range(n):
        make(conn, name=f"default/b{k}", concurrencyPolicy="BufferOne" if k % 2 else "BufferAll")
    assert len(scheduler.fire_due(conn, settings, now=T0 + H)) == n
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []
    buffered = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE reason = 'Buffered'").fetchone()
    assert buffered is not None and buffered["n"] == n


def test_runs_buffered_before_a_change_of_policy_are_still_released(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferAll")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    make(conn, concurrencyPolicy="Allow")
    finish(conn, first)
    assert reasons(conn) == [("successful", "Queued"), ("queued", "Queued")]


def test_a_paused_schedule_keeps_its_buffered_runs_until_resumed(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferAll", pauseAfterFailures=1)
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    finish(conn, first, "error")  # pauses the schedule: the buffered run stays held
    assert reasons(conn)[1] == ("queued", "Buffered")
    assert scheduler.release_cancelled_others(conn) == []
    schedules.resume(conn, "default/s", settings=settings, now=T0 + 2 * H)
    held = runs(conn)[1]
    finish(conn, runs(conn)[2].id)  # the run resume started ends: the buffered one goes next
    assert queue.get_task(conn, held.id).reason == "Queued"


def test_the_firing_pass_releases_a_buffered_run_whose_live_run_was_deleted(conn: db.Conn,
                                                                           settings: Settings) -> None:
    make(conn, concurrencyPolicy="BufferOne")
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    conn.execute("DELETE FROM kubetasks.tasks WHERE id = %s", (first,))  # no outcome will ever release it
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []  # nothing due, but the pass looks
    assert reasons(conn) == [("queued", "Queued")]
