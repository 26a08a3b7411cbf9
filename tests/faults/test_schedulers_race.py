"""Case 6: four schedulers at once (two worker processes firing every 0.1 s, and two connections of this
test calling `fire_due` in a loop) over many schedules and several rounds of ticks. Every tick must fire
exactly once, and by the row lock and compare-and-set alone: a duplicate stopped by the unique index
`tasks_schedule_tick` would show as an error in the server log, and counts as a failure here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import worker_actors  # noqa: F401 - declares the actors the schedules run
from faults import ledger
from faults.conftest import FaultReport
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, pgserver, scheduler, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

SCHEDULES = 150
ROUNDS = 12
CRON = "0 0 1 1 *"  # never due on its own during the test: the only ticks are the rounds set below


@pytest.mark.slow
def test_four_schedulers_fire_every_tick_exactly_once(
        pg_server: pgserver.LocalPostgres, dsn: str, conn: db.Conn, settings: Settings, tmp_path: Path,
        workers: Callable[..., WorkerProcess], fault_report: FaultReport) -> None:
    server_log = pg_server.basedir / "postgres.log"
    log_start = server_log.stat().st_size
    out = tmp_path / "runs"
    for i in range(SCHEDULES):
        schedules.apply(conn, f"default/r{i}", ScheduleSpec(
            actor="t.record", args={"path": str(out), "value": f"r{i}"}, schedule=CRON,
            successful_runs_history_limit=1000, failed_runs_history_limit=1000))
    procs = [workers(dsn, threads=4, scheduler_interval="0.1") for _ in range(2)]
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                                  " AND application_name = 'kubetasks-housekeeping'").fetchone() == {"n": 2},
             what="both workers' schedulers connected")
    stop = threading.Event()
    direct: list[int] = []
    errors: list[BaseException] = []

    def fire_loop() -> None:
        try:
            with db.connect(dsn) as c:
                while not stop.is_set():
                    direct.extend(scheduler.fire_due(c, settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire_loop, name=f"scheduler-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    expected: set[tuple[str, object]] = set()
    try:
        for _ in range(ROUNDS):
            # A new tick for every schedule at once; the four schedulers race for them.
            expected |= {(r["name"], r["next_run"]) for r in conn.execute(
                "UPDATE kubetasks.schedules SET next_run = clock_timestamp() RETURNING name, next_run")}
            wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.schedules WHERE next_run <= now()"
                                          ).fetchone() == {"n": 0}, timeout=30, what="every tick of the round fired")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    wait_for(lambda: ledger.unfinished(conn) == 0, timeout=30, what="the runs executed")
    fired = list(conn.execute("SELECT schedule_name, schedule_tick, count(*) AS n FROM kubetasks.tasks"
                              " GROUP BY 1, 2"))
    tally = ledger.tally(conn, ["t.record"], len(expected), ledger.record_runs(out), lambda a: str(a["value"]))
    collisions = server_log.read_text(errors="replace")[log_start:].count('"tasks_schedule_tick"')
    failures = sum(p.output().count("firing failed") + p.output().count("changed under") for p in procs)
    fault_report.record(tally, notes=f"{SCHEDULES} schedules x {ROUNDS} rounds, 4 schedulers; {len(direct)} "
                        f"fired by direct fire_due calls, the rest by the 2 workers; unique-index collisions "
                        f"in the server log: {collisions}; scheduler errors: {failures}")
    assert errors == []
    assert [r for r in fired if r["n"] != 1] == [], "a tick has more than one task"
    assert {(r["schedule_name"], r["schedule_tick"]) for r in fired} == expected
    per_schedule = conn.execute("SELECT count(DISTINCT n) AS kinds, min(n) AS n FROM (SELECT count(*) AS n"
                                " FROM kubetasks.tasks GROUP BY schedule_name) s").fetchone()
    assert per_schedule == {"kinds": 1, "n": ROUNDS}
    assert (tally.lost, tally.duplicated, tally.never_ran) == (0, 0, 0)
    assert collisions == 0, "the unique index, not the scheduler's lock, stopped a second run of a tick"
    assert failures == 0
