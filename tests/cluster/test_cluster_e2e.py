"""kubetasks as pods on a real cluster: the chart installed with Helm, the operator and workers running the
built image, tasks scheduled, scaled, killed and recovered. One release serves the module; tests run in
file order and each leaves the release idle (no tasks left, pool back where it started)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from faults import ledger
from localcluster import LocalCluster, free_port
from psycopg.rows import dict_row
from release import REPORT, Kubectl, Release, chart_values, schedule, sql, taskrun, wait

from kubetasks.worker import queue

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

NAMESPACE = "kt-e2e"
QUEUE = "e2e"


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, kubectl: Kubectl, helm_binary: str, database_url: str, ledger_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    port = int(cluster.server.rsplit(":", 1)[1])
    values = chart_values(image=("kubetasks", "dev"), database_url=database_url, server_port=port,
                          ledger=ledger_dir, operator_port=free_port(), metrics_port=free_port(),
                          queues=[QUEUE], max_replicas=len(cluster.nodes))
    rel = Release("e2e", NAMESPACE, helm_binary, cluster.kubeconfig, kubectl, database_url, values)
    # Without --wait on the workers: the pool starts at zero replicas, so helm waits for the operator only.
    REPORT["helm install --wait (s)"] = round(rel.install(tmp_path_factory.mktemp("helm")), 1)
    try:
        yield rel
    finally:
        rel.uninstall()


def connect(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    """Rows as dicts, as the queue API and the ledger read them; autocommit unless a transaction is opened."""
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def worker_lost(dsn: str, actors: list[str]) -> int:
    rows = sql(dsn, "SELECT count(*) AS n FROM kubetasks.task_attempts a JOIN kubetasks.tasks t ON t.id = a.task_id"
                    " WHERE a.reason = 'WorkerLost' AND t.actor = ANY(%s)", actors)
    return int(rows[0]["n"])


def states(dsn: str, actors: list[str]) -> dict[str, int]:
    rows = sql(dsn, "SELECT state::text AS state, count(*) AS n FROM kubetasks.tasks WHERE actor = ANY(%s)"
                    " GROUP BY 1", actors)
    return {r["state"]: int(r["n"]) for r in rows}


def clear(dsn: str, actors: list[str]) -> None:
    sql(dsn, "DELETE FROM kubetasks.tasks WHERE actor = ANY(%s)", actors)


def owner_uid(path: Path) -> int:
    return path.stat().st_uid


# -- tests -------------------------------------------------------------------------------------------


def test_operator_is_ready_with_its_liveness_probe_and_migrations_ran(release: Release) -> None:
    (pod,) = wait(lambda: release.ready_pods("operator"), "the operator pod to be Ready")
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == f"{release.fullname}-operator"
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    init = pod["status"]["initContainerStatuses"][0]
    assert init["name"] == "migrate" and init["state"]["terminated"]["exitCode"] == 0
    # The kubelet probes it for real: past the first probes and still not restarted.
    probe = container["livenessProbe"]
    settle = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) + 2
    started = time.monotonic()
    wait(lambda: time.monotonic() - started > settle, "the first liveness probes", timeout=settle + 5, interval=1)
    (pod,) = release.ready_pods("operator")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    tables = sql(release.database_url, "SELECT count(*) AS n FROM information_schema.tables"
                                       " WHERE table_schema = 'kubetasks'")
    assert tables[0]["n"] >= 3


def test_schedule_and_taskrun_run_in_worker_pods_and_status_mirrors_back(release: Release, ledger_dir: Path,
                                                                         cluster: LocalCluster,
                                                                         kubectl: Kubectl) -> None:
    marks, held, go = ledger_dir / "mirror", ledger_dir / "held", ledger_dir / "held-release"
    release.apply(
        # Holds its worker until the test has seen the pod Ready (short tasks end before the first probe).
        taskrun("held", "c.gate", queue=QUEUE, args={"path": str(held), "release": str(go)}),
        taskrun("once", "c.record", queue=QUEUE, args={"path": str(marks), "value": "taskrun"}),
        schedule("nightly", "c.record", queue=QUEUE, schedule="0 3 * * *", timeZone="Europe/Berlin",
                 args={"path": str(marks), "value": "schedule"}),
    )
    wait(lambda: release.status("schedules", "nightly").get("nextScheduleTime"), "the Schedule to be Ready")
    release.kubectl("annotate", "-n", release.namespace, "schedule/nightly", "kubetasks.dev/trigger=first")
    # From zero: the WorkerPool brings a worker up for the queued work.
    (worker,) = wait(lambda: release.ready_pods("worker")[:1], "a worker pod to be Ready", timeout=120)
    (container,) = worker["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["spec"]["automountServiceAccountToken"] is False
    done = wait(lambda: release.status("taskruns", "once").get("state") == "successful"
                and release.status("taskruns", "once"), "the TaskRun to succeed")
    assert done["attempt"] == 1
    cond = next(c for c in done["conditions"] if c["type"] == "Succeeded")
    assert cond["status"] == "True"
    runs = wait(lambda: [tr for tr in (release.get("taskruns", "", "-l", "kubetasks.dev/schedule=nightly") or
                                       {"items": []})["items"] if tr.get("status", {}).get("state") == "successful"],
                "the Schedule's triggered run to succeed")
    assert runs[0]["metadata"]["ownerReferences"][0]["kind"] == "Schedule"
    wait(lambda: release.status("schedules", "nightly").get("lastSuccessfulTime"), "the Schedule's last success")
    # Both ran in a pod: the file is written by the image's unprivileged user.
    assert sorted(marks.read_text().split()) == ["schedule", "taskrun"]
    assert owner_uid(marks) == 10001
    assert release.status("taskruns", "held").get("state") == "running"
    go.touch()
    wait(lambda: release.status("taskruns", "held").get("state") == "successful", "the held TaskRun to end")
    assert held.read_text().split() == ["start", "done"]


def test_burst_scales_up_from_zero_drains_and_back_to_zero_without_killing_tasks(
    release: Release, cluster: LocalCluster, ledger_dir: Path
) -> None:
    dsn, n_nodes = release.database_url, len(cluster.nodes)
    wait(lambda: release.replicas() == 0 and not release.pods("worker"), "an idle pool at zero", timeout=120)
    runs = ledger_dir / "burst"
    runs.touch(mode=0o666)
    runs.chmod(0o666)
    tasks = 2000
    began = time.monotonic()
    with connect(dsn) as conn, conn.transaction():
        queue.enqueue_many(conn, "c.burst", ({"path": str(runs), "value": f"b{i}", "seconds": 0.05}
                                              for i in range(tasks)), queue=QUEUE, validate=False)
    first_done = wait(lambda: states(dsn, ["c.burst"]).get("successful", 0) and time.monotonic() - began,
                      "the first task of the burst to finish", timeout=180)
    all_ready = wait(lambda: len(release.ready_pods("worker")) >= n_nodes and time.monotonic() - began,
                     f"{n_nodes} worker pods Ready", timeout=240)
    REPORT["burst: first task done (s)"] = round(first_done, 1)
    REPORT[f"burst: {n_nodes} worker pods Ready (s)"] = round(all_ready, 1)
    # Long tasks at the tail, of uneven lengths: pods scale down while some of them still run.
    holds = ledger_dir / "holds"
    holds.mkdir(mode=0o777)
    holds.chmod(0o777)
    with connect(dsn) as conn, conn.transaction():
        for i in range(4 * n_nodes):
            queue.enqueue(conn, "c.hold", {"path": str(holds / f"h{i}"), "seconds": 2 + 2 * i}, queue=QUEUE,
                          validate=False)
    wait(lambda: states(dsn, ["c.burst", "c.hold"]).keys() <= {"successful"}, "the burst to drain", timeout=300,
         interval=1)
    REPORT["burst: drained (s)"] = round(time.monotonic() - began, 1)
    wait(lambda: release.replicas() == 0 and not release.pods("worker"), "the pool back at zero", timeout=180)
    REPORT["burst: back at zero (s)"] = round(time.monotonic() - began, 1)
    burst = ledger.tally(connect(dsn), ["c.burst"], tasks, ledger.record_runs(runs), ledger.by_value)
    held = ledger.tally(connect(dsn), ["c.hold"], 4 * n_nodes, ledger.start_runs(holds), ledger.by_path)
    REPORT["burst: tally"] = burst.counts()
    REPORT["scale-down holds: tally"] = held.counts()
    assert (burst.lost, burst.duplicated, burst.worker_lost, burst.succeeded) == (0, 0, 0, tasks), burst.counts()
    assert (held.lost, held.worker_lost, held.reruns) == (0, 0, 0), held.counts()
    assert all(p.read_text().split() == ["start", "done"] for p in holds.iterdir())
    events = release.kubectl("get", "events", "-n", release.namespace, "-o", "json").stdout
    scaled = [e["message"] for e in json.loads(events)["items"] if e.get("reason") == "Scaled"]
    assert scaled, "no Scaled events on the WorkerPool"
    clear(dsn, ["c.burst", "c.hold"])


def test_worker_pod_killed_mid_task_is_recovered_and_ends_once(release: Release, ledger_dir: Path) -> None:
    dsn = release.database_url
    folder = ledger_dir / "kill"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    release_file = ledger_dir / "kill-release"
    with connect(dsn) as conn, conn.transaction():
        for i in range(3):
            queue.enqueue(conn, "c.wait_file", {"path": str(folder / f"k{i}"), "release": str(release_file)},
                          queue=QUEUE, validate=False)
    wait(lambda: len(list(folder.iterdir())) == 3, "three tasks running", timeout=120)
    (running,) = sql(dsn, "SELECT array_agg(DISTINCT worker) AS w FROM kubetasks.tasks"
                          " WHERE actor = 'c.wait_file' AND state = 'running'")
    # The pod running them (workers claim as soon as they start, maybe before their first readiness probe).
    victims = [p for p in release.pods("worker") if p["status"].get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")]
    assert len(victims) == 1, [p["metadata"]["name"] for p in victims]
    victim = victims[0]["metadata"]["name"]
    # Force: the container is killed at once, as on a node failure; no drain can save the attempt.
    release.kubectl("delete", "pod", "-n", release.namespace, victim, "--grace-period=0", "--force")
    lost = wait(lambda: worker_lost(dsn, ["c.wait_file"]), "the rescuer to recover the killed attempts",
                timeout=120)
    release_file.touch()
    wait(lambda: states(dsn, ["c.wait_file"]) == {"successful": 3}, "the three tasks to end", timeout=180)
    result = ledger.tally(connect(dsn), ["c.wait_file"], 3, ledger.start_runs(folder), ledger.by_path)
    REPORT["pod kill: tally"] = {**result.counts(), "workers before": running["w"]}
    assert (result.lost, result.duplicated, result.succeeded) == (0, 0, 3), result.counts()
    assert result.worker_lost == lost >= 1
    # Each task ended once: one "done" per file, after one "start" per attempt.
    assert all(p.read_text().split().count("done") == 1 for p in folder.iterdir())
    clear(dsn, ["c.wait_file"])


def test_operator_pod_deleted_a_new_one_converges_and_nothing_fires_twice(release: Release,
                                                                          ledger_dir: Path) -> None:
    dsn = release.database_url
    before = sql(dsn, "SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name = %s",
                 f"{release.namespace}/nightly")[0]["n"]
    (old,) = release.ready_pods("operator")
    release.kubectl("delete", "pod", "-n", release.namespace, old["metadata"]["name"], "--wait=true",
                    timeout=120)
    (_new,) = wait(lambda: [p for p in release.ready_pods("operator")
                           if p["metadata"]["uid"] != old["metadata"]["uid"]], "a new operator pod", timeout=120)
    marks = ledger_dir / "after-restart"
    release.apply(taskrun("after-restart", "c.record", queue=QUEUE, args={"path": str(marks), "value": "x"}))
    wait(lambda: release.status("taskruns", "after-restart").get("state") == "successful",
         "a TaskRun handled by the new operator", timeout=120)
    # The old trigger value is not fired again, and each TaskRun still has exactly one task.
    release.kubectl("annotate", "-n", release.namespace, "schedule/nightly", "kubetasks.dev/trigger=first",
                    "--overwrite")
    wait(lambda: release.status("schedules", "nightly").get("lastTrigger") == "first", "the trigger seen")
    after = sql(dsn, "SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name = %s",
                f"{release.namespace}/nightly")[0]["n"]
    assert after == before
    dup = sql(dsn, "SELECT object_ref, count(*) AS n FROM kubetasks.tasks WHERE object_ref IS NOT NULL"
                   " GROUP BY 1 HAVING count(*) > 1")
    assert dup == []
    assert marks.read_text().split() == ["x"]


def test_deleting_a_schedule_cascades_to_its_taskruns(release: Release) -> None:
    selector = "kubetasks.dev/schedule=nightly"
    assert (release.get("taskruns", "", "-l", selector) or {"items": []})["items"]
    release.kubectl("delete", "schedule", "nightly", "-n", release.namespace, "--wait=true", timeout=120)
    # The garbage collector of kube-controller-manager follows the ownerReferences.
    wait(lambda: not (release.get("taskruns", "", "-l", selector) or {"items": [1]})["items"],
         "the garbage collector to delete the Schedule's TaskRuns", timeout=120)


OPERATOR_ALLOWED = [
    ("list", "schedules.kubetasks.dev"), ("watch", "schedules.kubetasks.dev"), ("patch", "schedules.kubetasks.dev"),
    ("create", "taskruns.kubetasks.dev"), ("delete", "taskruns.kubetasks.dev"), ("patch", "taskruns.kubetasks.dev"),
    ("patch", "schedules.kubetasks.dev/status"), ("patch", "taskruns.kubetasks.dev/status"),
    ("patch", "workerpools.kubetasks.dev/status"), ("update", "schedules.kubetasks.dev/finalizers"),
    ("get", "deployments.apps"), ("patch", "deployments.apps/scale"), ("create", "events"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"), ("list", "namespaces"),
]
OPERATOR_DENIED = [
    ("update", "schedules.kubetasks.dev"), ("create", "schedules.kubetasks.dev"),
    ("delete", "schedules.kubetasks.dev"), ("patch", "deployments.apps"), ("delete", "deployments.apps"),
    ("get", "secrets"), ("list", "pods"), ("create", "pods"), ("delete", "pods"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"), ("escalate", "clusterroles"),
]
WORKER_DENIED = [
    ("get", "pods"), ("list", "pods"), ("get", "secrets"), ("list", "schedules.kubetasks.dev"),
    ("create", "taskruns.kubetasks.dev"), ("get", "deployments.apps"), ("patch", "deployments.apps/scale"),
    ("create", "events"), ("list", "namespaces"),
]


def can_i(release: Release, sa: str, verb: str, resource: str) -> bool:
    # "kind/x" would name an object x: subresources go in their own flag.
    kind, _, sub = resource.partition("/")
    proc = release.kubectl("auth", "can-i", verb, kind, *([f"--subresource={sub}"] if sub else []),
                           "-n", release.namespace,
                           f"--as=system:serviceaccount:{release.namespace}:{sa}", check=False)
    return proc.stdout.strip() == "yes"


def test_rbac_operator_has_what_it_needs_and_workers_nothing(release: Release) -> None:
    operator, worker = f"{release.fullname}-operator", f"{release.fullname}-worker"
    table: dict[str, str] = {}
    for sa, cases, expected in ((operator, OPERATOR_ALLOWED, True), (operator, OPERATOR_DENIED, False),
                                (worker, WORKER_DENIED, False)):
        for verb, resource in cases:
            got = can_i(release, sa, verb, resource)
            table[f"{sa.rsplit('-', 1)[1]} {verb} {resource}"] = "yes" if got else "no"
            assert got is expected, f"{sa} can-i {verb} {resource}: {got}"
    REPORT["auth can-i"] = table
    # Worker pods carry no token at all.
    for pod in release.pods("worker") or []:
        assert not any(v.get("projected") for v in pod["spec"].get("volumes", []))


def test_a_namespaced_install_serves_its_namespace_only(release: Release, cluster: LocalCluster,
                                                          ledger_dir: Path, pg_server: Any,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = "kt-team"
    url = pg_server.create_database(f"cluster_ns_{os.getpid()}", template="kubetasks_template")
    port = int(cluster.server.rsplit(":", 1)[1])
    values = chart_values(image=("kubetasks", "dev"), database_url=url, server_port=port, ledger=ledger_dir,
                          operator_port=free_port(), metrics_port=free_port(), queues=["team"], max_replicas=1,
                          operator={"watchNamespaces": [ns]}, workerPool={"minReplicas": 1})
    team = Release("team", ns, release.helm, release.kubeconfig, release.kubectl, url, values)
    team.install(tmp_path_factory.mktemp("helm-team"))
    try:
        marks = ledger_dir / "team"
        team.apply(taskrun("mine", "c.record", queue="team", args={"path": str(marks), "value": "team"}))
        wait(lambda: team.status("taskruns", "mine").get("state") == "successful", "the team's TaskRun",
             timeout=120)
        assert marks.read_text().split() == ["team"]
        # A TaskRun elsewhere is not this operator's: the e2e release's operator handles it (on its queue).
        assert sql(url, "SELECT count(*) AS n FROM kubetasks.tasks")[0]["n"] == 1
    finally:
        team.uninstall()
