"""Overlap policies and pausing after failures with real worker processes: the worker's own outcome write
releases a buffered run (and its NOTIFY wakes a worker that would otherwise sleep a minute), a cancel reaches
the running attempt before CancelOther starts the next run, and failed runs pause their schedule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue, scheduler, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

# Ticks far in the future: the workers' own scheduler (real time) never finds them due; the test fires them.
T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
H = timedelta(hours=1)


def make(conn: db.Conn, actor: str, args: dict[str, Any], **overrides: Any) -> None:
    spec = ScheduleSpec.model_validate({"actor": actor, "args": args, "schedule": "0 * * * *", **overrides})
    schedules.apply(conn, "default/s", spec, now=T0, validate_actor=False)


def runs(conn: db.Conn) -> list[queue.Task]:
    return list(reversed(schedules.history(conn, "default/s", limit=100)))


def marks(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_buffer_one_runs_the_buffered_tick_right_after_the_live_run_ends(
        conn: db.Conn, settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    out, release = tmp_path / "marks", tmp_path / "release"
    make(conn, "t.wait_file", {"path": str(out), "release": str(release)}, concurrencyPolicy="BufferOne")
    start_worker(consumer_listen_timeout="60")  # only the release's NOTIFY can wake it in time
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    wait_for(lambda: marks(out) == ["start"], what="the first run started")
    assert scheduler.fire_due(conn, settings, now=T0 + 2 * H) == []  # buffered
    assert scheduler.fire_due(conn, settings, now=T0 + 3 * H) == []  # skipped
    assert [(t.state, t.reason) for t in runs(conn)] == [("running", "Running"), ("queued", "Buffered")]
    release.touch()
    wait_for(lambda: [t.state for t in runs(conn)] == ["successful", "successful"], timeout=10,
             what="the buffered run, released by the first one's outcome")
    done, second = runs(conn)
    assert done.id == first and done.finished_at is not None and second.started_at is not None
    assert second.started_at >= done.finished_at  # never both at once
    assert marks(out) == ["start", "done", "start", "done"]
    assert second.schedule_tick == datetime(2030, 1, 7, 12, tzinfo=UTC)


def test_cancel_other_stops_the_running_attempt_before_the_next_run_starts(
        conn: db.Conn, settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    out, release = tmp_path / "marks", tmp_path / "release"
    make(conn, "t.wait_file", {"path": str(out), "release": str(release)}, concurrencyPolicy="CancelOther")
    worker = start_worker()
    [first] = scheduler.fire_due(conn, settings, now=T0 + H)
    wait_for(lambda: marks(out) == ["start"], what="the first run started")
    scheduler.fire_due(conn, settings, now=T0 + 2 * H)
    assert queue.get_task(conn, first).state == "cancelled"
    # The new run waits for the worker to act on the cancel; the workers' scheduler passes release it.
    wait_for(lambda: scheduler.release_cancelled_others(conn) or runs(conn)[1].reason != "Buffered", timeout=15,
             what="the new run released")
    wait_for(lambda: marks(out) == ["start", "start"], timeout=10, what="the second run started")
    release.touch()
    wait_for(lambda: runs(conn)[1].state == "successful", timeout=10, what="the second run done")
    assert f"task {first} cancelled while running" in worker.output()
    old, new = runs(conn)
    assert old.finished_at is not None and new.started_at is not None and new.started_at >= old.finished_at


def test_failed_runs_pause_the_schedule_after_the_limit(
        conn: db.Conn, settings: Settings, start_worker: Callable[..., WorkerProcess]) -> None:
    make(conn, "t.fail", {}, pauseAfterFailures=2, retries={"limit": 0})
    start_worker()
    for hour in (1, 2):
        [task_id] = scheduler.fire_due(conn, settings, now=T0 + hour * H)
        wait_for(lambda t=task_id: queue.get_task(conn, t).state == "error", timeout=10, what=f"run {hour} failed")
    row = schedules.get(conn, "default/s")
    assert row["paused"] and row["paused_reason"].startswith("2 failed runs in a row (pauseAfterFailures 2)")
    assert scheduler.fire_due(conn, settings, now=T0 + 3 * H) == []
