from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors enqueued below
from faults import probes
from psycopg import sql
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import consumer, db, protocol, queries, queue


def states(conn: db.Conn) -> dict[str, int]:
    return {r["state"]: r["n"] for r in conn.execute(
        "SELECT state::text, count(*) AS n FROM kubetasks.tasks GROUP BY state")}


def test_notification_picks_up_task_at_once(conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(consumer_listen_timeout="60")  # only a notification can wake it in time
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
                                  ).fetchone()["n"] > 0, what="worker listening")  # type: ignore[index]
    task = queue.enqueue(conn, "t.noop", {})
    done = wait_for(lambda: queue.get_task(conn, task.id).state == "successful", timeout=10, what="pick-up")
    assert done


@pytest.mark.parametrize("queue_name", ["team:billing", "a:b:c", "7:7"])
def test_a_queue_whose_name_holds_colons_is_woken_at_once(conn: db.Conn, queue_name: str,
                                                          start_worker: Callable[..., WorkerProcess]) -> None:
    # The wake-up payload is "<queue>:<id>": only the last colon separates them.
    start_worker(queues=[queue_name], consumer_listen_timeout="60")
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
                                  ).fetchone()["n"] > 0, what="worker listening")  # type: ignore[index]
    first = queue.enqueue(conn, "t.noop", {}, queue=queue_name)  # done: the start-up scan is behind us
    wait_for(lambda: queue.get_task(conn, first.id).state == "successful", timeout=70, what="first task")
    started = time.monotonic()
    task = queue.enqueue(conn, "t.noop", {}, queue=queue_name)
    wait_for(lambda: queue.get_task(conn, task.id).state == "successful", timeout=10, interval=0.01,
             what="pick-up")
    assert time.monotonic() - started < 2.0  # milliseconds in practice; the fallback scan is 60 s away


def test_tasks_enqueued_while_no_worker_ran_are_picked_up(conn: db.Conn, tmp_path: Path,
                                                         start_worker: Callable[..., WorkerProcess]) -> None:
    out = tmp_path / "out"
    for i in range(30):
        queue.enqueue(conn, "t.record", {"path": str(out), "value": str(i)})
    start_worker()
    wait_for(lambda: states(conn) == {"successful": 30}, what="all 30 done")
    assert sorted(out.read_text().split()) == sorted(str(i) for i in range(30))


def test_two_workers_race_each_task_runs_once(conn: db.Conn, tmp_path: Path,
                                             start_worker: Callable[..., WorkerProcess]) -> None:
    out = tmp_path / "out"
    queue.enqueue_many(conn, "t.record", ({"path": str(out), "value": str(i)} for i in range(400)))
    start_worker(threads=4)
    start_worker(threads=4)
    wait_for(lambda: states(conn) == {"successful": 400}, timeout=60, what="all 400 done")
    values = out.read_text().split()
    assert len(values) == 400 and len(set(values)) == 400


def test_two_claimers_one_task_exactly_one_wins(dsn: str, conn: db.Conn) -> None:
    task = queue.enqueue(conn, "t.noop", {})
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(2)

    def claim(name: str) -> None:
        with db.connect(dsn) as c:
            barrier.wait()
            rows = c.execute(queries.get("task_claim"),
                             {"queue": "default", "limit": 10, "worker": name, "session": 1})
            results[name] = [r["id"] for r in rows]

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results["a"] + results["b"]) == [task.id]


def test_retries_with_backoff_keep_per_attempt_logs(conn: db.Conn, tmp_path: Path,
                                                    start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    task = queue.enqueue(conn, "t.flaky", {"path": str(tmp_path / "tries"), "fail_times": 2})
    wait_for(lambda: queue.get_task(conn, task.id).state == "successful", what="flaky to succeed")
    final = queue.get_task(conn, task.id)
    attempts = queue.attempts(conn, task.id)
    assert final.attempts == 3
    assert [(a["attempt"], a["state"], a["reason"]) for a in attempts] == [
        (1, "running", "Retrying"), (2, "running", "Retrying"), (3, "successful", "Succeeded")]
    assert "boom 1" in attempts[0]["error"] and "boom 2" in attempts[1]["log"]
    assert "attempt 3" in attempts[2]["log"] and "boom" not in attempts[2]["log"]


def test_retries_exhausted_end_in_error(conn: db.Conn, tmp_path: Path,
                                        start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    task = queue.enqueue(conn, "t.flaky", {"path": str(tmp_path / "tries"), "fail_times": 99}, max_retries=1)
    wait_for(lambda: queue.get_task(conn, task.id).state == "error", what="flaky to fail")
    final = queue.get_task(conn, task.id)
    assert (final.attempts, final.reason) == (2, "Failed") and "boom 2" in (final.error or "")


def test_self_reported_warning_and_error_are_not_retried(conn: db.Conn,
                                                        start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    warned = queue.enqueue(conn, "t.warn", {})
    failed = queue.enqueue(conn, "t.fail", {})
    wait_for(lambda: states(conn) == {"warning": 1, "error": 1}, what="both finished")
    w, f = queue.get_task(conn, warned.id), queue.get_task(conn, failed.id)
    assert (w.attempts, w.reason, w.error) == (1, "SucceededWithWarnings", "disk almost full")
    assert (f.attempts, f.reason, f.error) == (1, "Failed", "bad input, do not retry")


def test_outcomes_of_every_kind_written_together_are_each_recorded_as_they_ended(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    # Claimed and finished together: plain successes are written by ids alone, the rest with what they keep,
    # and a success after a failure must not keep the failure's error.
    with conn.transaction():
        plain = [queue.enqueue(conn, "t.noop", {}).id for _ in range(3)]
        kept = queue.enqueue(conn, "t.record", {"path": str(tmp_path / "out"), "value": "v"}).id
        warned = queue.enqueue(conn, "t.warn", {}).id
        failed = queue.enqueue(conn, "t.fail", {}).id
        recovered = queue.enqueue(conn, "t.flaky", {"path": str(tmp_path / "tries"), "fail_times": 1,
                                                    "returns": None}, retry_backoff=0.05).id
    start_worker(threads=8)
    wait_for(lambda: states(conn) == {"successful": 5, "warning": 1, "error": 1}, what="all seven finished")
    ended = {t: queue.get_task(conn, t) for t in [*plain, kept, warned, failed, recovered]}
    assert {t: (e.state, e.reason, e.result, e.error, e.worker) for t, e in ended.items()} == {
        **{t: ("successful", "Succeeded", None, None, None) for t in plain},
        kept: ("successful", "Succeeded", {"value": "v"}, None, None),
        warned: ("warning", "SucceededWithWarnings", None, "disk almost full", None),
        failed: ("error", "Failed", None, "bad input, do not retry", None),
        recovered: ("successful", "Succeeded", None, None, None)}
    assert all(e.finished_at is not None and e.finished_at >= e.attempt_started_at  # type: ignore[operator]
               for e in ended.values())
    assert [(a["attempt"], a["reason"]) for a in queue.attempts(conn, recovered)] == [
        (1, "Retrying"), (2, "Succeeded")]


def test_time_limit_stops_busy_loop_and_sleep(conn: db.Conn, tmp_path: Path,
                                              start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(threads=2)
    busy = queue.enqueue(conn, "t.busy", {"path": str(tmp_path / "busy")})
    slept = queue.enqueue(conn, "t.sleep", {"path": str(tmp_path / "sleep")})
    wait_for(lambda: states(conn) == {"error": 2}, timeout=15, what="both timed out")
    for task_id in (busy.id, slept.id):
        task = queue.get_task(conn, task_id)
        assert (task.reason, task.attempts) == ("TimedOut", 1)
        assert task.duration is not None and 0.9 < task.duration < 5
    assert (tmp_path / "sleep").read_text().split() == ["start"]  # never woke up to finish
    # The threads are free again: new tasks still run.
    after = queue.enqueue(conn, "t.noop", {})
    wait_for(lambda: queue.get_task(conn, after.id).state == "successful", what="worker still healthy")


def test_time_limit_enforced_on_blocking_c_call(conn: db.Conn, tmp_path: Path,
                                                start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker(threads=1)
    blocked = queue.enqueue(conn, "t.block", {"path": str(tmp_path / "block")})
    wait_for(lambda: queue.get_task(conn, blocked.id).state == "error", timeout=10, what="blocked task failed")
    assert queue.get_task(conn, blocked.id).reason == "TimedOut"
    after = queue.enqueue(conn, "t.noop", {})
    wait_for(lambda: queue.get_task(conn, after.id).state == "successful", timeout=10,
             what="a replacement thread to run the next task")
    assert "abandoning thread" in worker.output()


def test_worker_killed_mid_task_is_recovered_and_retried(conn: db.Conn, tmp_path: Path,
                                                         start_worker: Callable[..., WorkerProcess]) -> None:
    marks, release = tmp_path / "marks", tmp_path / "release"
    victim = start_worker()
    task = queue.enqueue(conn, "t.wait_file", {"path": str(marks), "release": str(release)})
    wait_for(lambda: marks.exists() and "start" in marks.read_text(), what="task started")
    victim.kill()
    release.touch()
    start_worker()
    wait_for(lambda: queue.get_task(conn, task.id).state == "successful", timeout=30, what="recovered")
    final = queue.get_task(conn, task.id)
    attempts = queue.attempts(conn, task.id)
    assert final.attempts == 2
    assert (attempts[0]["attempt"], attempts[0]["reason"]) == (1, "WorkerLost")
    assert marks.read_text().split() == ["start", "start", "done"]


def test_cancel_stops_running_task(conn: db.Conn, tmp_path: Path,
                                   start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    marks = tmp_path / "marks"
    task = queue.enqueue(conn, "t.wait_file", {"path": str(marks), "release": str(tmp_path / "never")})
    wait_for(lambda: marks.exists(), what="task started")
    assert queue.cancel_task(conn, task.id) is not None
    # The worker records the interrupted attempt once its thread has stopped.
    wait_for(lambda: [a["state"] for a in queue.attempts(conn, task.id)] == ["cancelled"], what="attempt recorded")
    assert queue.get_task(conn, task.id).state == "cancelled"
    # Something that must not happen cannot be awaited: give a wrongly surviving thread a moment to write.
    time.sleep(0.1)
    assert marks.read_text().split() == ["start"]


def test_a_worker_holds_one_lock_however_many_tasks_it_runs(conn: db.Conn, tmp_path: Path,
                                                             start_worker: Callable[..., WorkerProcess]) -> None:
    # Batches far above max_locks_per_transaction (64 in the test server): the worker's one session lock marks
    # all its attempts alive; it takes no lock per attempt, and none survives the worker.
    queue.enqueue_many(conn, "t.noop", [{}] * 3000)
    worker = start_worker(threads=4, prefetch=200)
    seen: collections.Counter[tuple[int, int]] = collections.Counter()  # (lock class, count held)
    peak_running = 0

    def done() -> bool:
        nonlocal peak_running
        for row in conn.execute("SELECT classid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
                                " AND objsubid = 2 GROUP BY classid"):  # two-key ones (not `migrate`'s)
            seen[row["classid"], row["n"]] += 1
        running = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE worker IS NOT NULL").fetchone()
        peak_running = max(peak_running, running["n"])  # type: ignore[index]
        return states(conn) == {"successful": 3000}

    wait_for(done, timeout=60, interval=0.005, what="all done")
    assert peak_running > 64, "the batches never outgrew the old per-attempt lock budget"
    assert set(seen) == {(protocol.WORKER_LOCK, 1)}, seen
    worker.stop()
    assert conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype='advisory'").fetchone() == {"n": 0}


def test_housekeeping_purges_expired_tasks_on_a_timer_even_when_busy(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    marks = tmp_path / "marks"
    start_worker(threads=1, task_expiration="1", task_purge_interval="0.5")
    # Keep the only thread busy the whole time: purging must not wait for an idle worker.
    busy = queue.enqueue(conn, "t.wait_file", {"path": str(marks), "release": str(tmp_path / "never")})
    old = queue.enqueue(conn, "t.noop", {}, validate=False)
    conn.execute("UPDATE kubetasks.tasks SET state='successful', finished_at=now() - interval '1 hour',"
                 " worker=NULL WHERE id=%s", (old.id,))
    wait_for(lambda: marks.exists(), what="busy task running")
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE id=%s", (old.id,)
                                  ).fetchone() == {"n": 0}, what="expired task purged")
    assert queue.get_task(conn, busy.id).state == "running"


def test_scheduler_wakes_when_the_next_schedule_is_due_not_a_whole_interval_later(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    from kubetasks.worker import schedules
    from kubetasks.worker.manifests import ScheduleSpec

    schedules.apply(conn, "default/soon", ScheduleSpec(actor="t.noop", schedule="* * * * *"))
    # Due in 3 s: a worker that started before then must fire it then, not at its next 60 s interval.
    conn.execute("UPDATE kubetasks.schedules SET next_run = now() + interval '3 seconds'")
    start_worker(scheduler_interval="60")
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name='default/soon'"
                                  ).fetchone() == {"n": 1}, timeout=8, what="the run, well before 60 s")


def test_arguments_that_do_not_fit_the_actor_fail_at_once_without_retries(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    task = queue.enqueue(conn, "t.fail", {"unexpected": 1}, max_retries=5)
    wait_for(lambda: queue.get_task(conn, task.id).state == "error", what="the task to fail")
    final = queue.get_task(conn, task.id)
    assert (final.attempts, final.reason) == (1, "Failed")
    assert "args: do not fit t.fail()" in (final.error or "") and "unexpected" in (final.error or "")


def test_a_worker_with_every_slot_busy_waits_for_a_free_one_without_spinning(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    # A wake-up (here the second task's NOTIFY) with no slot free must not turn the claim loop into a busy loop.
    release = tmp_path / "release"
    busy = queue.enqueue(conn, "t.wait_file", {"path": str(tmp_path / "busy"), "release": str(release)}).id
    worker = start_worker(threads=1, prefetch=0, consumer_listen_timeout="60")
    wait_for(lambda: (tmp_path / "busy").exists(), what="the only thread busy")
    waiting = queue.enqueue(conn, "t.noop", {}).id
    before = probes.cpu_seconds(worker.pid)
    time.sleep(2)  # CPU burnt over a window: the thing measured is a rate, so it needs one
    burnt = probes.cpu_seconds(worker.pid) - before
    assert burnt < 0.5, f"{burnt:.2f} s of CPU in 2 s with nothing to do but wait"
    assert queue.get_task(conn, waiting).state == "queued"
    release.touch()
    wait_for(lambda: {queue.get_task(conn, t).state for t in (busy, waiting)} == {"successful"}, what="both done")


def hold_finishing_writes(conn: db.Conn, lock: int) -> None:
    """From now on, every write that finishes a task waits on advisory lock `lock` (shared), which the test
    takes to hold them up; claims and other writes go through."""
    conn.execute(sql.SQL("""
        CREATE FUNCTION public.hold_finish() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({lock}); RETURN NEW; END $$;
        CREATE TRIGGER hold_finish BEFORE UPDATE ON kubetasks.tasks FOR EACH ROW
            WHEN (NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL) EXECUTE FUNCTION public.hold_finish()
        """).format(lock=sql.Literal(lock)))
    conn.commit()


def test_claims_stop_while_outcomes_cannot_be_written(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    # Finishing writes are held up (a trigger waits on a lock the test holds) while claims are not: the worker
    # must stop claiming once OUTCOMES_MAX outcomes are waiting, not keep running tasks into memory.
    hold_finishing_writes(conn, 4242)
    bound = consumer.FLUSH_BATCH + consumer.OUTCOMES_MAX + 44  # being written, waiting, the slots
    total = bound + 2000
    queue.enqueue_many(conn, "t.noop", [{}] * total)
    with db.connect(conn.info.dsn) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        start_worker(threads=4, prefetch=40)  # capacity 44
        wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
                                      " AND objid = 4242 AND NOT granted").fetchone()["n"] > 0,  # type: ignore[index]
                 what="the first write held up")
        claimed = []
        for _ in range(20):  # the claims made over two seconds of held-up writes
            claimed.append(conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE attempts > 0"
                                        ).fetchone()["n"])  # type: ignore[index]
            time.sleep(0.1)
        assert max(claimed) <= bound, claimed
        holder.execute("SELECT pg_advisory_unlock(4242)")
    wait_for(lambda: states(conn) == {"successful": total}, timeout=60, what="all done once the writes resume")
    assert conn.execute("SELECT max(attempts) AS n FROM kubetasks.tasks").fetchone() == {"n": 1}


def test_outcomes_whose_write_was_cut_off_are_written_after_reconnecting_with_nothing_else_to_do(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    # The write of the last outcomes is held up (a trigger waits on a lock the test holds), then its connection
    # is terminated: the outcomes go back to the worker, and after reconnecting it must write them although no
    # other task will ever end and signal the recorder.
    hold_finishing_writes(conn, 4243)
    queue.enqueue_many(conn, "t.noop", [{}] * 5)
    held = ("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'kubetasks-worker %%' AND pid IN"
            " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4243 AND NOT granted)")
    with db.connect(conn.info.dsn) as holder:
        holder.execute("SELECT pg_advisory_lock(4243)")
        start_worker(threads=4)
        writer = wait_for(lambda: conn.execute(held).fetchone(), what="the write of the outcomes held up")
        conn.execute("SELECT pg_terminate_backend(%s)", (writer["pid"],))
        holder.execute("SELECT pg_advisory_unlock(4243)")
    wait_for(lambda: states(conn) == {"successful": 5}, timeout=30, what="the outcomes written after reconnecting")
    assert conn.execute("SELECT max(attempts) AS n FROM kubetasks.tasks").fetchone() == {"n": 1}
