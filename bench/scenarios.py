"""The seven scenarios, written once against the `System` interface so every system is timed alike.

Each scenario function gets a fresh database (cloned from the system's schema template) and returns
{metric key: value} plus details; the orchestrator turns exceptions into `failed` / `timeout`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from systems.base import Ctx, Slots, System, Timeout, WorkerGroup


@dataclass(frozen=True)
class Metric:
    key: str
    scenario: str
    figure: str
    unit: str
    higher_is_better: bool


METRICS = [
    Metric("enqueue", "1", "bulk enqueue", "tasks/s", True),
    Metric("startup", "2", "worker start-up (spawn to first task start)", "s", False),
    Metric("drain", "2", "drained (first task start to COUNT = 0), small queue", "tasks/s", True),
    Metric("drain_big", "2L", "drained (first task start to COUNT = 0), large queue", "tasks/s", True),
    Metric("steady_p50", "3", "steady rate: pick-up latency p50", "ms", False),
    Metric("steady_p99", "3", "steady rate: pick-up latency p99", "ms", False),
    Metric("deep_rss", "4", "deep queue: worker peak RSS", "MB", False),
    Metric("deep_claim", "4", "deep queue: claim latency (per slot)", "ms", False),
    Metric("deep_first", "4", "deep queue: first claim after start", "s", False),
    Metric("retry", "5", "10% fail once: drain", "tasks/s", True),
    Metric("retry_rel", "5", "10% fail once: relative to scenario 2", "x", True),
    Metric("sched", "6", "scheduler: all fired after the minute", "s", False),
    Metric("wf_spawn", "7", "fan-out: spawn of the children from a running actor (COPY)", "ms", False),
    Metric("wf_group", "7", "fan-out: start of a group of as many children from outside", "ms", False),
    Metric("wf_drain", "7", "fan-out: spawned children drained (first child start to parent final)", "tasks/s",
           True),
    Metric("wf_plain", "7", "fan-out: as many plain tasks drained by the same workers (first start to last final)",
           "tasks/s", True),
    Metric("wf_drain_rel", "7", "fan-out: children drained relative to plain tasks", "x", True),
    Metric("wf_last", "7", "fan-out: last child -> parent final, seen by a 2 ms poller", "ms", False),
    Metric("wf_rss_before", "7", "fan-out: worker RSS after the warm-up", "MB", False),
    Metric("wf_rss_after", "7", "fan-out: worker RSS after the 3 fan-outs", "MB", False),
]
SCENARIOS = {"1": "bulk enqueue", "2": "drain, small queue", "2L": "drain, large queue", "3": "steady state",
             "4": "deep queue", "5": "retries", "6": "scheduler", "7": "workflow fan-out"}


@dataclass
class Sizes:
    """Task counts for one suite run; the issue's full sizes times `scale`."""

    scale: float
    tasks: int = 0  # the large queue of scenario 2L
    small: int = 0  # scenarios 1, 2 and 5: a fifth of `tasks` unless set
    deep_queued: int = 0
    deep_finished: int = 0
    deep_work: int = 0  # tasks worked off the top of the deep backlog
    schedules: int = 0
    steady_rate: float = 500.0
    steady_seconds: float = 10.0
    fanout: int = 10_000  # children of scenario 7: the 10 000, whatever the scale

    def __post_init__(self) -> None:
        self.tasks = self.tasks or max(100, round(100_000 * self.scale))
        self.small = self.small or max(100, self.tasks // 5)
        self.deep_queued = self.deep_queued or max(1000, round(1_000_000 * self.scale))
        self.deep_finished = self.deep_finished or self.deep_queued
        self.deep_work = self.deep_work or min(self.deep_queued, self.small)
        self.schedules = self.schedules or max(10, round(10_000 * self.scale))


@dataclass
class Env:
    """What every scenario run needs besides the system."""

    system: System
    ctx: Ctx
    sizes: Sizes
    timeout: float
    groups: list[WorkerGroup] = field(default_factory=list)

    @property
    def slots(self) -> Slots:
        return self.system.slots

    def start_workers(self, schedules: int = 0) -> WorkerGroup:
        group = self.system.start_workers(self.ctx, schedules)
        self.groups.append(group)
        return group

    def stop_all(self) -> None:
        for group in self.groups:
            group.stop()
        self.groups.clear()


class Records:
    """Incremental reader of the task start records ("<tag> <unix time>" lines)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.offsets: dict[Path, int] = {}
        self.first: dict[str, float] = {}  # tag -> first start
        self.starts: dict[str, int] = {}  # tag -> number of starts
        self.times: list[float] = []  # every start, in reading order
        self.events: list[tuple[str, float]] = []  # every (tag, start)

    def poll(self) -> int:
        for path in self.out.glob("starts-*.txt"):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # only whole lines; a partial one is read next time
            self.offsets[path] = offset + end
            for line in data[:end].decode().splitlines():
                tag, _, stamp = line.partition(" ")
                t = float(stamp)
                self.times.append(t)
                self.events.append((tag, t))
                self.starts[tag] = self.starts.get(tag, 0) + 1
                if tag not in self.first or t < self.first[tag]:
                    self.first[tag] = t
        return len(self.times)

    def count_tasks(self, n: int) -> int:
        """How many of the task tags 0..n-1 have started at least once."""
        return sum(1 for i in range(n) if str(i) in self.first)


STALL_SECONDS = 60.0  # no progress for this long fails a wait early (e.g. a worker erroring in a loop)


def wait_for(what: str, check: Callable[[], bool], deadline: float, groups: list[WorkerGroup],
             interval: float = 0.05, progress: Callable[[], object] | None = None) -> float:
    """Poll `check` until true; return the time it was seen.

    Worker deaths, the deadline, and (given `progress`) no change of `progress()` for STALL_SECONDS raise.
    """
    last, moved = None, time.time()
    while True:
        for group in groups:
            group.check_alive()
            group.sample()
        if check():
            return time.time()
        now = time.time()
        if now > deadline:
            raise Timeout(f"timed out waiting for {what}")
        if progress is not None:
            current = progress()
            if current != last:
                last, moved = current, now
            elif now - moved > STALL_SECONDS:
                raise Timeout(f"no progress for {STALL_SECONDS:.0f}s waiting for {what}")
        time.sleep(interval)


def pending(conn: psycopg.Connection[Any], system: System) -> int:
    row = conn.execute(system.pending_sql).fetchone()
    return int(row[0]) if row else -1


def drain(env: Env, n: int, t0: float, group: WorkerGroup, records: Records) -> float:
    """Wait until tasks 0..n-1 all started, then until the database counts nothing left to do.

    The cheap file records tell when to start asking the database; the COUNT decides when it is drained.
    """
    deadline = t0 + env.timeout
    wait_for("all tasks to start", lambda: records.poll() >= n and records.count_tasks(n) == n,
             deadline, [group], progress=lambda: len(records.times))
    with psycopg.connect(env.ctx.dsn, autocommit=True) as conn:
        left = [-1]

        def drained() -> bool:
            left[0] = pending(conn, env.system)
            return left[0] == 0

        return wait_for("the queue to drain (COUNT = 0)", drained, deadline, [group], interval=0.02,
                        progress=lambda: left[0])


def scenario_enqueue(env: Env) -> dict[str, Any]:
    """Scenario 1: bulk-enqueue N tasks with the system's fastest public bulk API (no workers)."""
    n = env.sizes.small
    seconds = env.system.enqueue(env.ctx, n, timeout=env.timeout)
    return {"enqueue": n / seconds, "details": {"tasks": n, "enqueue_s": seconds}}


def drain_queued(env: Env, n: int) -> dict[str, Any]:
    """N tasks queued (server-side, untimed), then workers started: start-up and drain timed apart.

    Start-up is spawn to the first task start (interpreter, imports, connections, first claim); the
    drain rate is N over first task start to the database's COUNT of unfinished tasks reaching 0, so a
    slow start cannot decide a short run.
    """
    t_fill = time.time()
    env.system.prefill(env.ctx, n, 0, timeout=max(600.0, env.timeout))
    fill_s = time.time() - t_fill
    records = Records(env.ctx.out)
    t0 = time.time()
    group = env.start_workers()
    t_end = drain(env, n, t0, group, records)
    records.poll()
    first = min(records.first.values())
    return {"startup": first - t0, "drain": n / (t_end - first),
            "details": {"tasks": n, "prefill_s": fill_s, "spawn_to_drained_s": t_end - t0,
                        "end_to_end_per_s": n / (t_end - t0),
                        "duplicate_starts": sum(c - 1 for c in records.starts.values()),
                        "worker_peak_rss_mb": group.peak_rss_mb()}}


def scenario_drain_small(env: Env) -> dict[str, Any]:
    """Scenario 2: the small queue (N/5 tasks) drained with all slots."""
    return drain_queued(env, env.sizes.small)


def scenario_drain_large(env: Env) -> dict[str, Any]:
    """Scenario 2L: the large queue (N tasks) drained with all slots."""
    out = drain_queued(env, env.sizes.tasks)
    return {"drain_big": out.pop("drain"), "startup_big": out.pop("startup"), **out}


def ready(env: Env, group: WorkerGroup, records: Records, timeout: float = 120.0) -> float:
    """Enqueue the probe task (tag -1) and wait until a worker runs it: the workers are up."""
    env.system.probe(env.ctx)

    def probed() -> bool:
        records.poll()
        return "-1" in records.first

    return wait_for("the probe task (workers up)", probed, time.time() + timeout, [group])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def scenario_steady(env: Env) -> dict[str, Any]:
    """Scenario 3: enqueue one task at a time at a fixed rate while working; pick-up latency."""
    records = Records(env.ctx.out)
    group = env.start_workers()
    ready(env, group, records)
    rate, duration = env.sizes.steady_rate, env.sizes.steady_seconds
    proc = env.system.start_steady(env.ctx, rate, duration)
    try:
        deadline = time.time() + duration * 3 + 60
        wait_for("the steady enqueuer", lambda: proc.poll() is not None, deadline, [group], interval=0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"steady enqueuer exited {proc.returncode}: {stdout[-500:]}")
    commits: dict[str, float] = {}
    for line in (env.ctx.out / "enqueued.txt").read_text().splitlines():
        tag, _, stamp = line.partition(" ")
        commits[tag] = float(stamp)
    total = len(commits)
    t0 = time.time()
    drain(env, total, t0, group, records)
    latencies = [(records.first[tag] - t) * 1000 for tag, t in commits.items()]
    span = max(commits.values()) - min(commits.values())
    achieved = (total - 1) / span if span > 0 else float("nan")
    return {"steady_p50": percentile(latencies, 50), "steady_p99": percentile(latencies, 99),
            "details": {"tasks": total, "target_rate": rate, "achieved_rate": achieved,
                        "mean_ms": statistics.fmean(latencies), "max_ms": max(latencies),
                        "negative": sum(1 for v in latencies if v < 0)}}


def scenario_deep(env: Env) -> dict[str, Any]:
    """Scenario 4: a deep backlog (plus finished rows where the system keeps them); memory and claims."""
    sizes = env.sizes
    finished = sizes.deep_finished if env.system.keeps_finished else 0
    t_fill = time.time()
    env.system.prefill(env.ctx, sizes.deep_queued, finished, timeout=max(600.0, env.timeout))
    fill_s = time.time() - t_fill
    records = Records(env.ctx.out)
    t0 = time.time()
    group = env.start_workers()
    k = sizes.deep_work
    wait_for(f"{k} tasks off the deep backlog", lambda: records.poll() >= k, t0 + env.timeout, [group],
             progress=lambda: len(records.times))
    group.sample(every=0)
    times = sorted(records.times)[:k]
    span = times[-1] - times[0]
    per_slot_ms = env.slots.total * span / max(1, k - 1) * 1000
    return {"deep_rss": group.peak_rss_mb(), "deep_claim": per_slot_ms, "deep_first": times[0] - t0,
            "details": {"queued": sizes.deep_queued, "finished_rows": finished, "worked": k,
                        "prefill_s": fill_s, "throughput": (k - 1) / span if span > 0 else None,
                        "processes": len(group.hwm_kb)}}


def scenario_retries(env: Env) -> dict[str, Any]:
    """Scenario 5: as scenario 2 (enqueued through the bulk API), but every 10th task fails on its first
    attempt; timed from the first task start, like scenario 2."""
    n = env.sizes.small
    seconds = env.system.enqueue(env.ctx, n, fail_every=10, timeout=env.timeout)
    records = Records(env.ctx.out)
    t0 = time.time()
    group = env.start_workers()
    t_end = drain(env, n, t0, group, records)
    records.poll()
    first = min(records.first.values())
    should = [str(i) for i in range(0, n, 10)]
    not_retried = sum(1 for tag in should if records.starts.get(tag, 0) < 2)
    if not_retried:
        raise RuntimeError(f"{not_retried} failing tasks were not run a second time")
    extra = sum(records.starts.values()) - n - len(should)
    return {"retry": n / (t_end - first),
            "details": {"enqueue_s": seconds, "drain_s": t_end - first, "startup_s": first - t0,
                        "failed_once": len(should),
                        "unexpected_extra_starts": extra}}


def scenario_scheduler(env: Env) -> dict[str, Any]:
    """Scenario 6: S every-minute schedules; time from the minute until every one has run, once."""
    s = env.sizes.schedules
    records = Records(env.ctx.out)
    t_start = time.time()  # the orchestrator starts this scenario `ready_after_s` ahead of a minute
    env.system.setup_schedules(env.ctx, s)
    group = env.start_workers(schedules=s)
    t_ready = ready(env, group, records, timeout=180.0)
    # The next minute at least 3 s away: the probe proves the workers run tasks, not that every
    # scheduler has finished registering its schedules, so give them a little margin.
    boundary = math.ceil((t_ready + 3.0) / 60) * 60
    tags = {f"s{k}" for k in range(s)}
    late = boundary + 55.0  # past this the next minute would fire too
    fired_at: dict[str, list[float]] = {}
    seen = 0

    def collect() -> None:
        nonlocal seen
        records.poll()
        for tag, t in records.events[seen:]:
            if tag in tags and t >= boundary - 0.5:  # earlier ones would be catch-up of a past minute
                fired_at.setdefault(tag, []).append(t)
        seen = len(records.events)

    def all_fired() -> bool:
        collect()
        return len(fired_at) == len(tags)

    wait_for(f"all {s} schedules to fire", all_fired, late, [group], interval=0.1)
    t_all = max(times[0] for times in fired_at.values())
    # A grace period, then each schedule must have run exactly once for this minute.
    grace_end = min(late, time.time() + 2.0)
    while time.time() < grace_end:
        group.sample()
        time.sleep(0.1)
    collect()
    dupes = sum(len(times) - 1 for times in fired_at.values())
    if dupes:
        raise RuntimeError(f"{dupes} duplicate firings for one minute")
    return {"sched": t_all - boundary,
            "details": {"schedules": s, "ready_after_s": t_ready - t_start,
                        "waited_for_minute_s": boundary - t_ready,
                        "first_fired_after_s": min(min(v) for v in fired_at.values()) - boundary}}


def scenario_fanout(env: Env) -> dict[str, Any]:
    """Scenario 7 (kubetasks only): bench/workflow_fanout.py's measurement with this configuration's slots.
    C plain no-op tasks drained, a group of C children started from outside and drained, then C children
    spawned from inside a running task (one COPY transaction) and drained; the latency from the last child's
    outcome to a poller seeing the parent final; the workers' RSS after the warm-up and at the end."""
    import workflow_fanout  # kubetasks' own API, imported only when kubetasks runs this

    c = env.sizes.fanout
    procs = workflow_fanout.start_workers(env.ctx.dsn, env.slots.processes, env.slots.threads, env.ctx.logs)
    try:
        r = workflow_fanout.measure(env.ctx.dsn, c, [proc.pid for proc in procs], timeout=env.timeout)
    finally:
        workflow_fanout.stop_workers(procs)
    return {"wf_spawn": r["spawn_s"] * 1000, "wf_group": r["group_start_s"] * 1000,
            "wf_drain": r["spawn_drain_per_s"], "wf_plain": r["plain_drain_per_s"],
            "wf_drain_rel": r["spawn_drain_per_s"] / r["plain_drain_per_s"],
            "wf_last": r["last_child_to_parent_seen_s"] * 1000,
            "wf_rss_before": r["worker_rss_before_mb"], "wf_rss_after": r["worker_rss_after_mb"],
            "details": {"children": c, "group_drain_per_s": r["group_drain_per_s"],
                        "spawn_end_to_end_per_s": r["spawn_end_to_end_per_s"],
                        "plain_enqueue_s": r["plain_enqueue_s"],
                        "last_child_to_parent_db_s": r["last_child_to_parent_db_s"]}}


RUNNERS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "1": scenario_enqueue,
    "2": scenario_drain_small,
    "2L": scenario_drain_large,
    "3": scenario_steady,
    "4": scenario_deep,
    "5": scenario_retries,
    "6": scenario_scheduler,
    "7": scenario_fanout,
}


def runner_keys(selected: set[str]) -> list[str]:
    return [k for k in ("1", "2", "2L", "3", "4", "5", "6", "7") if k in selected]


def cpu_count() -> int:
    return os.cpu_count() or 1
