"""The operator's database side on real PostgreSQL: idempotent task creation, schedules, triggers, the runs a
Schedule shows, what the listener reads back, and the load a WorkerPool scales on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetasks.operator import resources, scaling, store
from kubetasks.worker import controls, db, queue, schedules
from kubetasks.worker.errors import InvalidInput
from kubetasks.worker.registry import actor
from kubetasks.worker.settings import Settings


@actor(name="optest.noop")
def noop(**kwargs: object) -> object:
    return kwargs


def spec(**overrides: Any) -> resources.TaskRunSpec:
    return resources.TaskRunSpec.model_validate({"actor": "optest.noop", **overrides})


def count(conn: db.Conn, where: str = "true") -> int:
    row = conn.execute(f"SELECT count(*) AS n FROM kubetasks.tasks WHERE {where}").fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row["n"])


def set_state(conn: db.Conn, task_id: int, state: str, reason: str, worker: str | None = None) -> None:
    finished = "now()" if state not in ("queued", "running") else "NULL"
    conn.execute(f"UPDATE kubetasks.tasks SET state = %s, reason = %s, worker = %s, finished_at = {finished} "  # type: ignore[arg-type]
                 "WHERE id = %s", (state, reason, worker, task_id))


# -- TaskRun -> task ----------------------------------------------------------------------------------------


def test_ensure_task_inserts_once(conn: db.Conn, settings: Settings) -> None:
    ref = store.taskrun_ref("ns", "job", "uid-1")
    run_at = datetime(2031, 1, 1, tzinfo=UTC)
    wanted = spec(args={"a": 1}, queue="q1", runAt=run_at.isoformat(), timeLimitSeconds=9, retries={"limit": 0},
                  priority=3)
    task, created = store.ensure_task(conn, ref, wanted, validate_actor=True, settings=settings)
    again, created_again = store.ensure_task(conn, ref, wanted, validate_actor=True, settings=settings)
    assert created and not created_again and again.id == task.id
    assert (task.actor, task.args, task.queue, task.eta, task.time_limit, task.max_retries, task.priority) == (
        "optest.noop", {"a": 1}, "q1", run_at, 9, 0, 3)
    assert task.object_ref == ref and count(conn) == 1
    # Even after it finished (no live dedup key any more), a re-delivery finds it.
    set_state(conn, task.id, "successful", "Succeeded")
    found, created_late = store.ensure_task(conn, ref, wanted, validate_actor=True, settings=settings)
    assert (found.id, found.state, created_late) == (task.id, "successful", False)
    assert count(conn) == 1


def test_racing_operators_create_one_task(dsn: str, settings: Settings) -> None:
    ref = store.taskrun_ref("ns", "raced", "uid-2")
    barrier = threading.Barrier(4)
    ids: list[int] = []

    def create() -> None:
        with db.connect(dsn) as own:
            barrier.wait()
            task, _ = store.ensure_task(own, ref, spec(), validate_actor=True, settings=settings)
            ids.append(task.id)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(ids) == 4 and len(set(ids)) == 1
    with db.connect(dsn) as conn:
        assert count(conn) == 1


def test_unknown_actor_enqueues_nothing(conn: db.Conn, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.ensure_task(conn, "taskrun/ns/x/u", spec(actor="optest.missing"), validate_actor=True,
                              settings=settings)
    assert raised.value.field == "actor" and "optest.missing" in str(raised.value)
    assert count(conn) == 0


def test_cancel_only_unfinished(conn: db.Conn, settings: Settings) -> None:
    task, _ = store.ensure_task(conn, "taskrun/ns/c/u", spec(), validate_actor=True, settings=settings)
    cancelled = store.cancel(conn, task.id, "by test")
    assert cancelled is not None and cancelled.state == "cancelled" and cancelled.error == "by test"
    assert store.cancel(conn, task.id, "again") is None
    assert store.cancel(conn, 999_999, "gone") is None


# -- Schedule -> row ----------------------------------------------------------------------------------------


def test_apply_schedule_stores_an_operator_row(conn: db.Conn, settings: Settings) -> None:
    row = store.apply_schedule(conn, "team", "nightly", {"actor": "optest.noop", "schedule": "@daily",
                                                             "suspend": True}, validate_actor=True, settings=settings)
    assert row["name"] == "team/nightly" and row["source"] == "operator" and row["paused"] is True
    assert row["action"] == "created"
    assert store.delete_schedule(conn, "team", "nightly") is True
    assert store.delete_schedule(conn, "team", "nightly") is False


@pytest.mark.parametrize(("changes", "field"), [
    ({"schedule": "61 * * * *"}, "spec.schedule"),
    ({"timeZone": "Mars/Olympus"}, "spec.timeZone"),
    ({"actor": "optest.unknown"}, "spec.actor"),
])
def test_invalid_schedule_names_the_field(conn: db.Conn, settings: Settings, changes: dict[str, Any],
                                          field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.apply_schedule(conn, "team", "bad", {"actor": "optest.noop", "schedule": "@hourly", **changes},
                                 validate_actor=True, settings=settings)
    assert raised.value.field == field
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.schedules").fetchone() == {"n": 0}


def test_a_trigger_value_fires_once_without_moving_next_run(conn: db.Conn, settings: Settings) -> None:
    row = store.apply_schedule(conn, "team", "t", {"actor": "optest.noop", "schedule": "@yearly"},
                                   validate_actor=True, settings=settings)
    first, fired = store.trigger_once(conn, "team", "t", "2030-01-01T00:00:00Z", settings=settings)
    again, fired_again = store.trigger_once(conn, "team", "t", "2030-01-01T00:00:00Z", settings=settings)
    assert fired and not fired_again and again.id == first.id
    second, fired_second = store.trigger_once(conn, "team", "t", "another", settings=settings)
    assert fired_second and second.id != first.id
    assert schedules.get(conn, "team/t")["next_run"] == row["next_run"]
    assert count(conn, "schedule_name = 'team/t'") == 2


def test_kept_runs_follow_the_history_limits(conn: db.Conn, settings: Settings) -> None:
    store.apply_schedule(conn, "team", "h", {"actor": "optest.noop", "schedule": "@hourly"},
                             validate_actor=True, settings=settings)
    ids = [queue.enqueue(conn, "optest.noop", schedule_name="team/h", settings=settings).id for _ in range(7)]
    for task_id, (state, reason) in zip(ids, [("successful", "Succeeded"), ("error", "Failed"),
                                              ("successful", "Succeeded"), ("cancelled", "Cancelled"),
                                              ("warning", "SucceededWithWarnings"), ("error", "TimedOut")],
                                        strict=False):
        set_state(conn, task_id, state, reason)
    runs = store.schedule_runs(conn, "team", "h", keep_successful=2, keep_failed=1)
    # live: ids[6]; newest 2 successful/warning: ids[4], ids[2]; newest failed/cancelled: ids[5]
    assert [r["id"] for r in runs.kept] == [ids[2], ids[4], ids[5], ids[6]]
    assert runs.newest == {"id": ids[6], "state": "queued"}
    assert runs.finished == {"id": ids[5], "state": "error", "reason": "TimedOut", "error": None}
    assert runs.row is not None and runs.row["active_runs"] == 1
    none = store.schedule_runs(conn, "team", "missing", 1, 1)
    assert none.row is None and none.kept == [] and none.newest is None


# -- reading back -------------------------------------------------------------------------------------------


def test_views_carry_the_latest_log_and_route(conn: db.Conn, settings: Settings) -> None:
    store.apply_schedule(conn, "team", "v", {"actor": "optest.noop", "schedule": "@hourly"},
                             validate_actor=True, settings=settings)
    run = queue.enqueue(conn, "optest.noop", schedule_name="team/v", settings=settings)
    manual, _ = store.ensure_task(conn, "taskrun/team/m/u", spec(), validate_actor=True, settings=settings)
    other = queue.enqueue(conn, "optest.noop", settings=settings)
    for attempt, log in ((1, "first"), (2, "second\nlast line")):
        conn.execute("INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, log) "
                     "VALUES (%s, %s, 'running', 'Retrying', %s)", (run.id, attempt, log))
    views = {v["id"]: v for v in store.task_views(conn, [run.id, manual.id, other.id])}
    assert views[run.id]["log"] == "second\nlast line" and views[run.id]["schedule_source"] == "operator"
    assert store.target_of(views[run.id]) == store.Target("team", f"v-{run.id}", schedule="v")
    assert store.target_of(views[manual.id]) == store.Target("team", "m", uid="u")
    assert store.target_of(views[other.id]) is None
    # The resync sees the mirrored rows only; the new-run cursor sees the schedule's runs only.
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert {r["id"] for r in store.changed_since(conn, since)} == {run.id, manual.id}
    assert [r["id"] for r in store.scheduled_after(conn, 0)] == [run.id]
    assert store.scheduled_after(conn, run.id) == []
    assert store.max_task_id(conn) == other.id


def test_pool_load_counts_only_work_that_can_run_now(conn: db.Conn, settings: Settings) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(3):
        queue.enqueue(conn, "optest.noop", queue="pool", settings=settings)
    queue.enqueue(conn, "optest.noop", queue="pool", eta=later, settings=settings)  # future-dated
    busy = queue.enqueue(conn, "optest.noop", queue="pool", settings=settings)
    set_state(conn, busy.id, "running", "Running", worker="w1")
    waiting = queue.enqueue(conn, "optest.noop", queue="pool", settings=settings)  # a retry in backoff
    conn.execute("UPDATE kubetasks.tasks SET state = 'running', reason = 'Retrying', eta = %s WHERE id = %s",
                 (later, waiting.id))
    done = queue.enqueue(conn, "optest.noop", queue="pool", settings=settings)
    set_state(conn, done.id, "successful", "Succeeded")
    queue.enqueue(conn, "optest.noop", queue="elsewhere", settings=settings)
    assert store.pool_load(conn, ["pool"]) == scaling.Load(runnable=3, running=1)
    assert store.pool_load(conn, ["pool", "elsewhere"]).runnable == 4
    assert store.pool_load(conn, ["empty"]) == scaling.Load(0, 0)
    controls.set_limits(conn, controls.QueueControl("pool", concurrency_limit=2))
    assert store.pool_load(conn, ["pool"]) == scaling.Load(runnable=1, running=1, held=2)  # 1 slot left
    controls.set_paused(conn, "pool", True)
    assert store.pool_load(conn, ["pool", "elsewhere"]) == scaling.Load(runnable=1, running=1, held=3)
