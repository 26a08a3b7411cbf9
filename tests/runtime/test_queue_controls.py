"""Queue controls with real worker processes: pause and resume, concurrency limits, rate limits."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import worker_actors  # noqa: F401 - declares the actors enqueued below
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import controls, db, queue


def count(conn: db.Conn, sql: str, *params: object) -> int:
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # test-only literal SQL
    assert row is not None
    return int(row["n"])


def running(conn: db.Conn, name: str) -> int:
    return count(conn, "SELECT count(*) AS n FROM kubetasks.tasks WHERE queue = %s AND worker IS NOT NULL", name)


def done(conn: db.Conn, name: str) -> int:
    return count(conn, "SELECT count(*) AS n FROM kubetasks.tasks WHERE queue = %s AND state = 'successful'", name)


def overlaps(path: Path) -> tuple[int, dict[str, int]]:
    """Most spans of t.span running at once, overall and per key, from their start/end lines."""
    events = []
    for line in path.read_text().splitlines():
        kind, key, at = line.split(" ")
        events.append((float(at), 0 if kind == "end" else 1, key))  # at equal times, ends first
    overall, most = 0, 0
    per_key: collections.Counter[str] = collections.Counter()
    most_per_key: dict[str, int] = {}
    for _, start, key in sorted(events):
        step = 1 if start else -1
        overall += step
        per_key[key] += step
        most = max(most, overall)
        most_per_key[key] = max(most_per_key.get(key, 0), per_key[key])
    return most, most_per_key


@contextmanager
def sampling(dsn: str, name: str) -> Iterator[list[int]]:
    """Counts of the queue's tasks held by workers, sampled continuously while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with db.connect(dsn) as c:
            while not stop.is_set():
                samples.append(running(c, name))

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(10)


def start_fleet(start_worker: Callable[..., WorkerProcess], n: int = 4, **settings: object) -> None:
    for _ in range(n):
        start_worker(threads=8, **settings)


def test_concurrency_limit_of_3_across_4_processes_of_8_threads(
        dsn: str, conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    out = tmp_path / "spans"
    controls.set_limits(conn, controls.QueueControl("limited", concurrency_limit=3))
    queue.enqueue_many(conn, "t.span", ({"path": str(out), "seconds": 0.03} for _ in range(150)), queue="limited")
    with sampling(dsn, "limited") as samples:
        start_fleet(start_worker, queues=["limited"])
        wait_for(lambda: done(conn, "limited") == 150, timeout=90, what="150 limited tasks done")
    most, _ = overlaps(out)
    assert max(samples) == 3 and len(samples) > 100  # the limit was reached, never passed
    assert most == 3


def test_per_key_limit_of_1_never_runs_two_of_one_key(
        dsn: str, conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    out = tmp_path / "spans"
    controls.set_limits(conn, controls.QueueControl("per-customer", concurrency_key="customer",
                                                    key_concurrency_limit=1))
    queue.enqueue_many(conn, "t.span", ({"path": str(out), "key": str(i % 5), "customer": i % 5, "seconds": 0.03}
                                        for i in range(100)), queue="per-customer")
    start_fleet(start_worker, queues=["per-customer"])
    wait_for(lambda: done(conn, "per-customer") == 100, timeout=90, what="100 keyed tasks done")
    most, per_key = overlaps(out)
    assert per_key == {str(k): 1 for k in range(5)}
    assert most == 5  # the customers did run side by side


def test_rate_limit_of_50_per_second_holds_over_20_seconds(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    controls.set_limits(conn, controls.QueueControl("rated", rate_limit=50, rate_period=1.0))
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(1400)), queue="rated")
    start_fleet(start_worker, queues=["rated"])
    first = wait_for(lambda: conn.execute("SELECT min(attempt_started_at) AS at FROM kubetasks.tasks").fetchone()
                     ["at"], timeout=30, what="a first start")  # type: ignore[index]
    wait_for(lambda: db.now(conn) > first + timedelta(seconds=22), timeout=40, interval=0.2, what="22 s")
    starts = sorted((r["at"] - first).total_seconds() for r in conn.execute(
        "SELECT attempt_started_at AS at FROM kubetasks.tasks WHERE attempt_started_at IS NOT NULL"))
    per_second = [sum(1 for s in starts if w <= s < w + 1) for w in range(21)]
    steady = sum(per_second[1:])  # the first second also spends what the bucket saved while workers started
    print(f"rate 50/s: {sum(per_second[:20])} starts in the first 20 s, {steady} in the 20 s after; "
          f"per second {per_second}")
    # A token bucket of 50 refilled at 50/s: at most 50 + 50 * t starts in any t seconds.
    assert sum(per_second[:20]) <= 50 + 50 * 20
    assert 950 <= steady <= 1050  # 1000 ± 5 %
    assert max(per_second) <= 100


def test_pausing_under_load_stops_claims_within_a_second_and_loses_nothing(
        dsn: str, conn: db.Conn, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    out = tmp_path / "spans"
    total = 3000
    queue.enqueue_many(conn, "t.span", ({"path": str(out), "key": str(i), "seconds": 0.005} for i in range(total)),
                       queue="busy")
    start_fleet(start_worker, queues=["busy", "other"])
    wait_for(lambda: done(conn, "busy") >= 300, timeout=60, what="the queue under load")
    controls.set_paused(conn, "busy", True)
    paused_at = db.now(conn)
    wait_for(lambda: running(conn, "busy") == 0, timeout=30, what="running tasks to finish")
    # The workers still claim (from the other queue) after the pause; none claims from the paused one.
    probe = queue.enqueue(conn, "t.noop", {}, queue="other")
    wait_for(lambda: queue.get_task(conn, probe.id).state == "successful", timeout=20, what="the probe")
    row = conn.execute("SELECT max(attempt_started_at) AS last, count(*) FILTER (WHERE state = 'queued') AS waiting"
                       " FROM kubetasks.tasks WHERE queue = 'busy'").fetchone()
    assert row is not None
    last_claim = (row["last"] - paused_at).total_seconds()
    print(f"pause: last claim {last_claim * 1000:.0f} ms after the pause; {row['waiting']} tasks waiting")
    assert last_claim < 1.0 and row["waiting"] > 0
    controls.set_paused(conn, "busy", False)
    wait_for(lambda: done(conn, "busy") == total, timeout=120, what="all tasks after resuming")
    starts = [line.split(" ")[1] for line in out.read_text().splitlines() if line.startswith("start")]
    assert sorted(starts, key=int) == [str(i) for i in range(total)]  # each ran exactly once


def test_a_paused_queue_stays_paused_for_workers_started_later(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess]) -> None:
    controls.set_paused(conn, "held", True)
    tasks = [queue.enqueue(conn, "t.noop", {}, queue="held") for _ in range(3)]
    start_worker(queues=["held", "other"])
    probe = queue.enqueue(conn, "t.noop", {}, queue="other")
    wait_for(lambda: queue.get_task(conn, probe.id).state == "successful", timeout=20, what="the probe")
    assert [queue.get_task(conn, t.id).state for t in tasks] == ["queued"] * 3
    started = time.monotonic()
    controls.set_paused(conn, "held", False)
    wait_for(lambda: done(conn, "held") == 3, timeout=10, interval=0.01, what="resumed tasks")
    assert time.monotonic() - started < 1.0  # resuming wakes the workers; no scan interval to wait for
