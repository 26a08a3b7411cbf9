"""The operator under faults: `kill -9` and restart while TaskRuns change state, and two operators plus two
workers racing on the same Schedules.

Same setup as test_operator_e2e.py (a real kube-apiserver, the real `kopf run` operator, real `kubetasks
worker` processes, real PostgreSQL), whose helpers are imported. Each test gets its own database and
namespace, and its operators watch only that namespace, so objects other tests leave in the shared apiserver
are never enqueued into this test's database. The database is the source of truth: after
every fault, each TaskRun's status must converge to its task row, and each TaskRun, trigger value and
schedule tick must have exactly one row. Each test prints one summary line of counts (visible with -s).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane, Kubectl
from kubernetes import client
from test_operator_e2e import (
    BIN,
    Process,
    _env,
    apply,
    condition,
    get,
    listed,
    schedule,
    sql,
    start_operator,
    status_of,
    taskrun,
)
from test_operator_e2e import api as api  # the fixtures, re-exported so pytest finds them here
from test_operator_e2e import crds as crds
from test_operator_e2e import operator_kubeconfig as operator_kubeconfig
from waiting import wait_for

from kubetasks.worker import db, pgserver

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

SCHEDULE_LABEL = "kubetasks.dev/schedule"
TASK_ID_LABEL = "kubetasks.dev/task-id"
TRIGGER = "kubetasks.dev/trigger"
FINAL = ("successful", "warning", "error", "cancelled")
CONDITION_STATUS = {"queued": "Unknown", "running": "Unknown", "successful": "True", "warning": "True",
                    "error": "False", "cancelled": "False"}
_databases = itertools.count()


# -- processes --------------------------------------------------------------------------------------------


def start_worker(dsn: str, workdir: Path, name: str, **extra: str) -> Process:
    """A `kubetasks worker` on the default queue whose scheduler fires due schedules every second."""
    env = _env(dsn, KUBETASKS_WORKER__METRICS_PORT="0", KUBETASKS_WORKER__QUEUES='["default"]',
               KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT="1", KUBETASKS_WORKER__RETRY_BACKOFF_BASE="0.05",
               KUBETASKS_WORKER__SCHEDULER_INTERVAL="1", **extra)
    return Process([str(BIN / "kubetasks"), "worker"], env, workdir / f"{name}.log", workdir)


def kill9(proc: Process) -> None:
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    proc.stop()  # closes the log file


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Every process a test starts goes in here, so a failing test still stops them all."""
    started: list[Process] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def database(pg_server: pgserver.LocalPostgres) -> str:
    url: str = pg_server.create_database(f"operator_faults_{os.getpid()}_{next(_databases)}",
                                         template="kubetasks_template")
    return url


@pytest.fixture
def ns(kubectl: Kubectl, crds: None) -> str:
    name = f"f-{os.urandom(4).hex()}"
    kubectl("create", "namespace", name)
    return name


# -- what the database and the apiserver say --------------------------------------------------------------


@dataclass
class Census:
    """Every TaskRun of a namespace against every task row behind it."""

    taskruns: int = 0
    rows: int = 0
    live_rows: int = 0  # rows still queued or running
    rowless: list[str] = field(default_factory=list)  # TaskRuns with no row
    duplicates: dict[str, int] = field(default_factory=dict)  # TaskRun -> rows, where more than one
    orphans: list[int] = field(default_factory=list)  # schedule runs with no TaskRun
    stale: dict[str, str] = field(default_factory=dict)  # TaskRun -> how its status differs from its row

    @property
    def converged(self) -> int:
        return self.taskruns - len(self.rowless) - len(self.stale)

    @property
    def settled(self) -> bool:
        """Every row finished, and every TaskRun has exactly one row that its status mirrors."""
        return not (self.live_rows or self.rowless or self.duplicates or self.orphans or self.stale)

    def line(self) -> str:
        return (f"taskruns={self.taskruns} rows={self.rows} duplicates={sum(self.duplicates.values())} "
                f"rowless={len(self.rowless)} orphans={len(self.orphans)} converged={self.converged}/{self.taskruns}")


def rows_of(dsn: str, ns: str) -> list[dict[str, Any]]:
    return sql(dsn, "SELECT id, state::text AS state, reason, attempts, object_ref, schedule_name, schedule_tick "
                    "FROM kubetasks.tasks WHERE object_ref LIKE %s OR schedule_name LIKE %s ORDER BY id",
               f"taskrun/{ns}/%", f"{ns}/%")


def mismatch(tr: dict[str, Any], row: dict[str, Any]) -> str | None:
    status = tr.get("status") or {}
    cond = condition(tr, "Succeeded")
    want = (row["state"], row["attempts"], row["id"], CONDITION_STATUS[row["state"]], row["reason"])
    have = (status.get("state"), status.get("attempt"), status.get("taskId"), cond.get("status"), cond.get("reason"))
    return None if want == have else f"status {have} != row {want}"


def census(api: client.ApiClient, dsn: str, ns: str) -> Census:
    found = Census()
    rows = rows_of(dsn, ns)
    found.rows, found.live_rows = len(rows), sum(r["state"] not in FINAL for r in rows)
    by_taskrun: dict[str, list[dict[str, Any]]] = {}
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        if (row["object_ref"] or "").startswith("taskrun/"):
            by_taskrun.setdefault(row["object_ref"].split("/")[2], []).append(row)
    mirrored: set[int] = set()
    for tr in listed(api, "taskruns", ns):
        found.taskruns += 1
        meta = tr["metadata"]
        label = (meta.get("labels") or {}).get(TASK_ID_LABEL)
        if label is not None:  # a schedule's run: the row is named by the label
            child = by_id.get(int(label))
            mine = [child] if child and child["schedule_name"] == f"{ns}/{meta['labels'][SCHEDULE_LABEL]}" else []
        else:  # hand-made: the row is found by object_ref, whatever uid it names
            mine = by_taskrun.get(meta["name"], [])
            mine = [r for r in mine if r["object_ref"] == f"taskrun/{ns}/{meta['name']}/{meta['uid']}"] or mine
        if len(by_taskrun.get(meta["name"], [])) > 1:
            found.duplicates[meta["name"]] = len(by_taskrun[meta["name"]])
        if not mine:
            found.rowless.append(meta["name"])
            continue
        mirrored.add(mine[0]["id"])
        problem = mismatch(tr, mine[0])
        if problem:
            found.stale[meta["name"]] = problem
    found.orphans = [r["id"] for r in rows if r["schedule_name"] and r["id"] not in mirrored]
    return found


def schedule_rows(dsn: str, ns: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """A schedule's runs: fired by a trigger (no tick) or by a tick."""
    rows = sql(dsn, "SELECT id, state::text AS state, object_ref, schedule_tick FROM kubetasks.tasks "
                    "WHERE schedule_name = %s ORDER BY id", f"{ns}/{name}")
    return {"triggers": [r for r in rows if r["schedule_tick"] is None],
            "ticks": [r for r in rows if r["schedule_tick"] is not None]}


def trigger_rows(dsn: str, ns: str, name: str, value: str) -> list[dict[str, Any]]:
    return sql(dsn, "SELECT id, state::text AS state FROM kubetasks.tasks WHERE object_ref = %s",
               f"trigger/{ns}/{name}/{value}")


def event_messages(kubectl: Kubectl, ns: str, name: str, reason: str) -> list[str]:
    found = json.loads(kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}",
                               "-o", "json").stdout)["items"]
    return [e["message"] for e in found if e["reason"] == reason]


def wait(check: Any, what: str, timeout: float = 45) -> Any:
    return wait_for(check, timeout=timeout, interval=0.2, what=what)


def wait_settled(api: client.ApiClient, dsn: str, ns: str, expected_rows: int, what: str,
                 timeout: float = 45) -> Census:
    """Wait until every row finished and every TaskRun mirrors its one row; the census on timeout."""

    def settled() -> Census | None:
        found = census(api, dsn, ns)
        return found if found.settled and found.rows == expected_rows else None

    try:
        result: Census = wait(settled, what, timeout)
        return result
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{census(api, dsn, ns)!r}, expected {expected_rows} rows") from None


# -- a namespaced operator under the chart's RBAC ------------------------------------------------------------


def test_a_namespaced_operator_under_the_chart_rbac_handles_taskruns_promptly(
        ns: str, kubectl: Kubectl, api: client.ApiClient, database: str, operator_kubeconfig: Path,
        tmp_path: Path, processes: list[Process]) -> None:
    """The chart passes --namespace for `operator.watchNamespaces` but its ClusterRole has no `namespaces`
    rule; Kopf then retries listing namespaces (403) about a minute before it handles anything, on every
    start, so every restart of such an operator is a minute without statuses, runs or Schedules stored."""
    processes.append(op := start_operator(database, operator_kubeconfig, tmp_path, "operator", ns))
    apply(kubectl, ns, taskrun("probe", "t.noop", queue="parked"))
    began = time.monotonic()
    handled = wait_for(lambda: status_of(api, "taskruns", ns, "probe").get("taskId") or time.monotonic() > began + 20,
                       timeout=30, interval=0.2)
    forbidden = [line for line in op.output().splitlines() if "Forbidden" in line]
    print(f"\nnamespaced operator under the chart's RBAC: handled_within_20s={handled is not True} "
          f"forbidden_requests={len(forbidden)}")
    assert handled is not True and not forbidden, (
        f"TaskRun handled within 20 s: {handled is not True}; {len(forbidden)} Forbidden requests, the first: "
        f"{forbidden[0] if forbidden else None}")


# -- 5. kill -9 and restart ---------------------------------------------------------------------------------


def test_operator_killed_and_restarted_while_taskruns_change_state(
        ns: str, kubectl: Kubectl, api: client.ApiClient, database: str,
        controlplane: ControlPlane, tmp_path: Path, processes: list[Process]) -> None:
    """Twenty hand-made TaskRuns and a Schedule's runs: A) finished with the operator up, B) running or queued
    when it is killed, C) created as it is killed, D) created, fired and finished while it is down. After the
    restart every status matches its row, every TaskRun has one row, and a trigger value fires only once."""
    began = time.monotonic()
    marks, release = tmp_path / "marks", tmp_path / "release"
    # Two threads and no prefetch: two slow tasks occupy the worker and everything after them stays queued.
    processes.append(worker := start_worker(database, tmp_path, "worker", KUBETASKS_WORKER__THREADS="2",
                                            KUBETASKS_WORKER__PREFETCH="0"))
    processes.append(op := start_operator(database, controlplane.kubeconfig, tmp_path, "operator-1", ns))

    # A: runs that finish while the operator is up.
    marks.mkdir()
    apply(kubectl, ns, "---\n".join(
        [taskrun(f"quick-{i}", "t.record", args={"path": str(marks / f"quick-{i}"), "value": "x"})
         for i in range(4)]
        + [taskrun("broken", "t.fail"),
           taskrun("flaky", "t.flaky", args={"path": str(tmp_path / "flaky"), "fail_times": 1}, retries={"limit": 2}),
           schedule("nightly", actor="t.record", args={"path": str(marks / "nightly"), "value": "run"},
                    schedule="0 3 * * *", concurrencyPolicy="Allow", successfulRunsHistoryLimit=10)]))
    wait(lambda: condition(listed(api, "schedules", ns)[0], "Ready").get("status") == "True", "nightly Ready")
    kubectl("annotate", "-n", ns, "schedule/nightly", f"{TRIGGER}=v1")
    wait_settled(api, database, ns, 7, "phase A to finish and be mirrored")

    # B: two slow runs take both threads and a third waits; then four quick ones queue behind them.
    apply(kubectl, ns, "---\n".join(
        taskrun(f"slow-{i}", "t.wait_file", args={"path": str(marks / f"slow-{i}"), "release": str(release)})
        for i in range(3)))

    def states(names: list[str]) -> list[Any]:
        return sorted(status_of(api, "taskruns", ns, n).get("state") or "" for n in names)

    slow, behind = [f"slow-{i}" for i in range(3)], [f"behind-{i}" for i in range(4)]
    wait(lambda: states(slow) == ["queued", "running", "running"], "two slow runs Running, one Queued")
    apply(kubectl, ns, "---\n".join(
        taskrun(n, "t.record", args={"path": str(marks / n), "value": "x"}) for n in behind))
    wait(lambda: states(behind) == ["queued"] * 4, "four quick runs Queued behind them")

    # C: six more TaskRuns, applied one by one; kill -9 the moment the second has its row, so one is likely
    # mid-handler (row inserted, status not yet written) and the rest arrive while the operator is dying or dead.
    late = [taskrun(f"late-{i}", "t.record", args={"path": str(marks / f"late-{i}"), "value": "x"})
            for i in range(6)]
    with ThreadPoolExecutor(1) as pool, db.connect(database) as conn:
        creating = pool.submit(lambda: [apply(kubectl, ns, manifest) for manifest in late])
        late_rows = "SELECT count(*) AS n FROM kubetasks.tasks WHERE object_ref LIKE %s"
        wait_for(lambda: conn.execute(late_rows, (f"taskrun/{ns}/late-%",)).fetchone()["n"] >= 2,
                 timeout=30, interval=0.002, what="the second late row")
        kill9(op)
        creating.result(timeout=60)
    at_kill = census(api, database, ns)
    late_ids = {r["object_ref"].split("/")[2]: r["id"] for r in rows_of(database, ns)
                if (r["object_ref"] or "").startswith(f"taskrun/{ns}/late-")}
    unmirrored_at_kill = [n for n in late_ids if not status_of(api, "taskruns", ns, n).get("taskId")]
    recorded_v1 = status_of(api, "schedules", ns, "nightly").get("lastTrigger")

    # D: the operator is down. A TaskRun is created, a tick comes due, the worker finishes everything.
    apply(kubectl, ns, taskrun("while-down", "t.record", args={"path": str(marks / "while-down"), "value": "x"}))
    # The crash window between firing a trigger and recording it in status.lastTrigger, made certain: the
    # restarted operator sees v1 as new and only the database's trigger marker stops a second run.
    kubectl("patch", "-n", ns, "schedule/nightly", "--subresource=status", "--type=merge",
            "-p", '{"status": {"lastTrigger": null}}')
    sql(database, "UPDATE kubetasks.schedules SET next_run = now() WHERE name = %s", f"{ns}/nightly")
    release.touch()
    wait(lambda: (r := schedule_rows(database, ns, "nightly"))["ticks"] and all(
        t["state"] in FINAL for t in r["ticks"]), "the worker to fire and run the due tick")
    wait(lambda: census(api, database, ns).live_rows == 0, "the worker to finish every enqueued task")
    # A long outage without the wait: every change is an hour old, out of reach of the listener's resync
    # window (twice its interval plus a margin), so only Kopf's resume handlers and the Schedule sync can
    # bring the statuses back.
    sql(database, "UPDATE kubetasks.tasks SET updated_at = updated_at - interval '1 hour' "
                  "WHERE object_ref LIKE %s OR schedule_name LIKE %s", f"taskrun/{ns}/%", f"{ns}/%")
    down = census(api, database, ns)

    # E: restart; every TaskRun converges, the late and while-down ones get exactly one row each.
    restarted = time.monotonic()
    processes.append(op := start_operator(database, controlplane.kubeconfig, tmp_path, "operator-2", ns))
    wait_settled(api, database, ns, 20 + 2, "every TaskRun to converge after the restart", timeout=60)
    converge_seconds = time.monotonic() - restarted
    assert len(trigger_rows(database, ns, "nightly", "v1")) == 1
    wait(lambda: any("already covers it" in m for m in event_messages(kubectl, ns, "nightly", "Triggered")),
         "the restarted operator to find v1 already fired")
    wait(lambda: status_of(api, "schedules", ns, "nightly").get("lastTrigger") == "v1", "v1 recorded again")

    # The same value once more (with another annotation so the update reaches the handler): no run.
    handled = f"[{ns}/nightly] Handler 'schedule_changed' succeeded"
    before = op.output().count(handled)
    kubectl("annotate", "-n", ns, "schedule/nightly", f"{TRIGGER}=v1", "kubetasks.dev/touch=1", "--overwrite")
    wait(lambda: op.output().count(handled) > before, "the operator to handle the same trigger value")
    same_value_runs = len(schedule_rows(database, ns, "nightly")["triggers"]) - 1
    # A new value: exactly one more run.
    kubectl("annotate", "-n", ns, "schedule/nightly", f"{TRIGGER}=v2", "--overwrite")
    wait(lambda: status_of(api, "schedules", ns, "nightly").get("lastTrigger") == "v2", "v2 recorded")
    final = wait_settled(api, database, ns, 20 + 3, "the v2 run to be mirrored")
    runs = schedule_rows(database, ns, "nightly")
    executions = len((marks / "nightly").read_text().splitlines())
    newest = f"nightly-{max(r['id'] for r in runs['triggers'] + runs['ticks'])}"

    def schedule_converged() -> dict[str, Any] | None:
        found = status_of(api, "schedules", ns, "nightly")
        wanted = {"lastRunName": newest, "lastRunState": "successful", "active": 0, "lastTrigger": "v2"}
        return found if {k: found.get(k) for k in wanted} == wanted else None

    wait(schedule_converged, "the Schedule's status to converge")

    print(f"\ncase5 kill-9/restart: {final.line()} in_flight_at_kill={at_kill.live_rows} "
          f"late_rows_at_kill={len(late_ids)}/6 late_unmirrored_at_kill={len(unmirrored_at_kill)} "
          f"lastTrigger_at_kill={recorded_v1!r} "
          f"stale_while_down={len(down.stale)} rowless_while_down={len(down.rowless)} "
          f"schedule_runs=triggers:{len(runs['triggers'])},ticks:{len(runs['ticks'])} "
          f"same_value_refires={same_value_runs} schedule_executions={executions} "
          f"converged_after_restart_in={converge_seconds:.1f}s total={time.monotonic() - began:.1f}s")
    assert at_kill.live_rows > 0, "nothing was queued or running when the operator was killed"
    assert final.taskruns == 23 and final.rows == 23 and final.converged == 23, final
    assert same_value_runs == 0
    assert len(runs["triggers"]) == 2 and len(runs["ticks"]) == 1, runs
    assert len(trigger_rows(database, ns, "nightly", "v2")) == 1
    assert executions == 3
    assert len(listed(api, "taskruns", ns, f"{SCHEDULE_LABEL}=nightly")) == 3
    # The expected outcomes, not only agreement between status and row.
    flaky = status_of(api, "taskruns", ns, "flaky")
    assert (flaky["state"], flaky["attempt"]) == ("successful", 2)
    assert condition(get(api, "taskruns", ns, "broken"), "Succeeded")["reason"] == "Failed"
    assert worker.alive()


# -- 6. two operators, two workers ---------------------------------------------------------------------------


def test_two_operators_and_two_schedulers_fire_each_trigger_and_tick_once(
        ns: str, kubectl: Kubectl, api: client.ApiClient, database: str,
        controlplane: ControlPlane, tmp_path: Path, processes: list[Process]) -> None:
    """Four schedulers race on every tick (two operators' and two workers'), two operators on every trigger
    annotation and every hand-made TaskRun; each trigger value and tick must make one run and one TaskRun."""
    began = time.monotonic()
    marks = tmp_path / "marks"
    marks.mkdir()
    names, rounds = [f"s{i}" for i in range(5)], 3
    workers = [start_worker(database, tmp_path, f"worker-{i}", KUBETASKS_WORKER__THREADS="2") for i in range(2)]
    processes.extend(workers)
    operators = [start_operator(database, controlplane.kubeconfig, tmp_path, f"operator-{i}", ns) for i in range(2)]
    processes.extend(operators)

    apply(kubectl, ns, "---\n".join(
        [schedule(n, actor="t.record", args={"path": str(marks / n), "value": "run"}, schedule="0 3 * * *",
                  concurrencyPolicy="Allow", successfulRunsHistoryLimit=20) for n in names]
        + [taskrun(f"hand-{i}", "t.record", args={"path": str(marks / f"hand-{i}"), "value": "x"})
           for i in range(6)]))
    wait(lambda: all(condition(s, "Ready").get("status") == "True" for s in listed(api, "schedules", ns))
         and len(listed(api, "schedules", ns)) == len(names), "every Schedule Ready")
    handled = "Handler 'schedule_changed' succeeded"
    wait(lambda: all(o.output().count(handled) >= len(names) for o in operators), "both operators to store them")

    kubectl("annotate", "-n", ns, *[f"schedule/{n}" for n in names], f"{TRIGGER}=go")
    wait(lambda: all(o.output().count(f"[{ns}/{n}] {handled}") >= 2 for o in operators for n in names),
         "both operators to handle every trigger annotation")
    for round_ in range(rounds):
        marker = sql(database, "SELECT now() AS now")[0]["now"]
        sql(database, "UPDATE kubetasks.schedules SET next_run = now() WHERE name LIKE %s", f"{ns}/%")
        wait(lambda m=marker, k=round_ + 1: all(len(schedule_rows(database, ns, n)["ticks"]) >= k for n in names)
             and sql(database, "SELECT count(*) AS n FROM kubetasks.schedules WHERE name LIKE %s AND next_run <= %s",
                     f"{ns}/%", m)[0]["n"] == 0, f"tick round {round_ + 1} to fire")
    wait(lambda: all(status_of(api, "schedules", ns, n).get("lastTrigger") == "go" for n in names),
         "every trigger recorded")
    expected_rows = len(names) * (1 + rounds) + 6
    final = wait_settled(api, database, ns, expected_rows, "every run to finish and be mirrored", timeout=60)

    per_schedule = {n: schedule_rows(database, ns, n) for n in names}
    trigger_fires = {n: len(trigger_rows(database, ns, n, "go")) for n in names}
    ticks = {n: len({r["schedule_tick"] for r in rows["ticks"]}) for n, rows in per_schedule.items()}
    executions = {n: len((marks / n).read_text().splitlines()) for n in names}
    children = {n: len(listed(api, "taskruns", ns, f"{SCHEDULE_LABEL}={n}")) for n in names}
    schedule_row_count = sql(database, "SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name LIKE %s",
                             f"{ns}/%")[0]["n"]
    # Who won each tick, from the scheduler's log line ("schedule <name> tick <t>: due, task <id>; ...").
    fired_by = {p.log.stem: sum(f"schedule {ns}/" in line and ", task " in line for line in p.output().splitlines())
                for p in [*operators, *workers]}
    covered = sum(len([m for m in event_messages(kubectl, ns, n, "Triggered") if "already covers it" in m])
                  for n in names)
    print(f"\ncase6 two operators + two workers: {final.line()} schedules={len(names)} "
          f"trigger_fires={sum(trigger_fires.values())}/{len(names)} "
          f"tick_rows={sum(len(r['ticks']) for r in per_schedule.values())}/{len(names) * rounds} "
          f"distinct_ticks={sum(ticks.values())} schedule_rows={schedule_row_count} "
          f"ticks_fired_by={','.join(f'{k}:{v}' for k, v in fired_by.items())} "
          f"trigger_seen_twice_deduplicated_in_db={covered} "
          f"schedule_taskruns={sum(children.values())} executions={sum(executions.values())} "
          f"total={time.monotonic() - began:.1f}s")
    assert trigger_fires == dict.fromkeys(names, 1)
    assert all(len(r["triggers"]) == 1 for r in per_schedule.values()), per_schedule
    assert ticks == dict.fromkeys(names, rounds)
    assert all(len(r["ticks"]) == rounds for r in per_schedule.values()), per_schedule
    assert children == dict.fromkeys(names, 1 + rounds)
    assert executions == dict.fromkeys(names, 1 + rounds)
    assert sum(fired_by.values()) == len(names) * rounds, fired_by
    assert final.taskruns == expected_rows and final.converged == expected_rows, final
    assert all(o.alive() for o in operators)
