"""`async def` actors: their attempts run on the worker's event loop, with the same outcomes, retries, logs,
time limits and cancels as threads give sync actors, and at most `threads` of them at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import worker_actors  # noqa: F401 - declares the actors enqueued below
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue


def states(conn: db.Conn) -> dict[str, int]:
    return {r["state"]: r["n"] for r in conn.execute(
        "SELECT state::text, count(*) AS n FROM kubetasks.tasks GROUP BY state")}


def spans(path: Path) -> dict[str, tuple[float, float]]:
    marks: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        what, key, at = line.split()
        marks.setdefault(key, {})[what] = float(at)
    return {key: (m["start"], m["end"]) for key, m in marks.items()}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_an_async_actor_retries_and_keeps_its_result_log_and_prints(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    task = queue.enqueue(conn, "t.async_record", {"path": str(tmp_path / "marks"), "value": "v1", "fail_times": 1})
    wait_for(lambda: queue.get_task(conn, task.id).state == "successful", what="the async task to succeed")
    final = queue.get_task(conn, task.id)
    assert (final.attempts, final.result) == (2, {"value": "v1", "attempt": 2})
    attempts = queue.attempts(conn, task.id)
    assert [(a["attempt"], a["state"], a["reason"]) for a in attempts] == [
        (1, "running", "Retrying"), (2, "successful", "Succeeded")]
    assert "async boom 1" in attempts[0]["error"]
    assert "async attempt 2 of v1" in attempts[1]["log"] and "printed by v1" in attempts[1]["log"]
    assert "async boom" not in attempts[1]["log"]


def test_a_self_reported_warning_of_an_async_actor_is_not_retried(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    task = queue.enqueue(conn, "t.async_warn", {})
    wait_for(lambda: queue.get_task(conn, task.id).state == "warning", what="the warning")
    final = queue.get_task(conn, task.id)
    assert (final.attempts, final.reason, final.error) == (1, "SucceededWithWarnings", "async disk almost full")


def test_async_attempts_run_side_by_side_up_to_threads_and_keep_their_own_logs(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    marks = tmp_path / "spans"
    tasks = [queue.enqueue(conn, "t.async_span", {"path": str(marks), "key": f"k{i}", "seconds": 0.6})
             for i in range(9)]
    start_worker(threads=3, prefetch=20)  # all nine claimed at once; three may run
    wait_for(lambda: states(conn) == {"successful": 9}, timeout=30, what="all nine done")
    intervals = list(spans(marks).values())
    assert len(intervals) == 9
    assert most_at_once(intervals) == 3, intervals  # side by side on one loop, and no more than `threads`
    for i, task in enumerate(tasks):
        log_text = queue.attempts(conn, task.id)[0]["log"] if queue.attempts(conn, task.id) else ""
        lines = [line for line in log_text.splitlines() if line.startswith("line of")]
        assert lines == [f"line of k{i}"] * 3, log_text  # interleaved prints never land in another's log


def test_an_async_actor_past_its_time_limit_fails_on_time_and_the_loop_goes_on(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(threads=1)
    slept = queue.enqueue(conn, "t.async_sleep", {"path": str(tmp_path / "sleep")})
    wait_for(lambda: queue.get_task(conn, slept.id).state == "error", timeout=15, what="the sleep to time out")
    task = queue.get_task(conn, slept.id)
    assert (task.reason, task.attempts) == ("TimedOut", 1)
    assert task.duration is not None and 0.9 < task.duration < 5
    after = queue.enqueue(conn, "t.async_record", {"path": str(tmp_path / "after"), "value": "next"})
    wait_for(lambda: queue.get_task(conn, after.id).state == "successful", what="the slot to be free again")
    assert (tmp_path / "sleep").read_text().split() == ["start"]  # cancelled, never woke up


def test_cancel_stops_a_running_async_attempt(conn: db.Conn, tmp_path: Path,
                                              start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker()
    marks = tmp_path / "marks"
    task = queue.enqueue(conn, "t.async_sleep", {"path": str(marks), "seconds": 0.8}, time_limit=60)
    wait_for(lambda: marks.exists(), what="the task to start")
    assert queue.cancel_task(conn, task.id) is not None
    wait_for(lambda: [a["state"] for a in queue.attempts(conn, task.id)] == ["cancelled"], what="attempt recorded")
    assert queue.get_task(conn, task.id).state == "cancelled"
    time.sleep(1.0)  # past the sleep's own end: a surviving coroutine would have written "woke" by now
    assert marks.read_text().split() == ["start"]


def test_a_sync_actor_blocking_its_thread_does_not_hold_up_async_ones(
        conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(threads=1)
    marks, release = tmp_path / "marks", tmp_path / "release"
    blocker = queue.enqueue(conn, "t.wait_file", {"path": str(marks), "release": str(release)})
    wait_for(lambda: marks.exists(), what="the sync task to hold the only thread")
    quick = queue.enqueue(conn, "t.async_record", {"path": str(tmp_path / "quick"), "value": "q"})
    wait_for(lambda: queue.get_task(conn, quick.id).state == "successful", what="the async task beside it")
    assert queue.get_task(conn, blocker.id).state == "running"
    release.touch()
    wait_for(lambda: queue.get_task(conn, blocker.id).state == "successful", what="the sync task")
