"""The operator end to end: a real kube-apiserver, the real operator process (`kopf run`), a real worker
process (`kubetasks worker`) and real PostgreSQL.

The operator runs under a ServiceAccount token bound to exactly the chart's ClusterRole rules
(charts/kubetasks/files/operator-rules.yaml), so every test here also proves the RBAC is sufficient. There
are no nodes: a Deployment never gets pods, but its scale subresource works, which is all a WorkerPool
touches. Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, Kubectl, free_port
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from waiting import wait_for

from kubetasks.worker import controls, db, pgserver

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNTIME = REPO / "tests" / "runtime"  # worker_actors.py: the actors both processes import
GROUP, VERSION = "kubetasks.dev", "v1alpha1"
SA_NAMESPACE = "kubetasks-system"


# -- processes --------------------------------------------------------------------------------------------


class Process:
    """A child process logging to a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETASKS_")}
    env.update({"KUBETASKS_DATABASE__URL": dsn, "KUBETASKS_WORKER__MODULES": json.dumps(["worker_actors"]),
                "PYTHONPATH": str(RUNTIME), **extra})
    return env


def start_operator(dsn: str, kubeconfig: Path, workdir: Path, name: str = "operator",
                   namespace: str | None = None, **extra_env: str) -> Process:
    """The real operator process, watching every namespace or only `namespace`."""
    port = free_port()
    env = _env(dsn, KUBECONFIG=str(kubeconfig),
               KUBETASKS_OPERATOR__SCHEDULE_SYNC_INTERVAL="2", KUBETASKS_OPERATOR__RESYNC_INTERVAL="5",
               KUBETASKS_OPERATOR__SCHEDULER_INTERVAL="1", **extra_env)
    # cwd is a temp dir: the repository root must never be on sys.path (its operator/ shadows the stdlib).
    scope = f"--namespace={namespace}" if namespace else "--all-namespaces"
    proc = Process([str(BIN / "kopf"), "run", "-m", "kubetasks.operator.handlers", scope,
                    "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz"], env, workdir / f"{name}.log",
                   workdir)

    def healthy() -> bool:
        assert proc.alive(), f"operator {name} exited:\n{proc.output()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_for(healthy, timeout=60, interval=0.2, what=f"operator {name}'s liveness endpoint")
    return proc


@pytest.fixture(scope="module")
def database(pg_server: pgserver.LocalPostgres) -> str:
    return pg_server.create_database(f"operator_e2e_{os.getpid()}", template="kubetasks_template")


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/schedules.kubetasks.dev",
            "crd/taskruns.kubetasks.dev", "crd/workerpools.kubetasks.dev", timeout=90)


@pytest.fixture(scope="module")
def operator_kubeconfig(controlplane: ControlPlane, kubectl: Kubectl, crds: None,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig whose user is a ServiceAccount holding only the chart's ClusterRole rules."""
    rules = yaml.safe_load((REPO / "charts/kubetasks/files/operator-rules.yaml").read_text())
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SA_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "kubetasks-operator", "namespace": SA_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "kubetasks-operator-e2e"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "kubetasks-operator-e2e"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubetasks-operator-e2e"},
         "subjects": [{"kind": "ServiceAccount", "name": "kubetasks-operator", "namespace": SA_NAMESPACE}]},
    ]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    token = kubectl("create", "token", "kubetasks-operator", "-n", SA_NAMESPACE, "--duration=2h").stdout.strip()
    kubeconfig = json.loads(controlplane.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in kubeconfig["contexts"]:
        context["context"]["user"] = "operator"
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    return path


@pytest.fixture(scope="module")
def operator(database: str, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_operator(database, operator_kubeconfig, tmp_path_factory.mktemp("operator-run"))
    yield proc
    proc.stop()
    # Forbidden means the RBAC rules miss something the operator needed.
    # An HTTP 403, not the digits of a log line's milliseconds ("20:42:52,403").
    forbidden = re.search(r"(?<![,.\d])403(?!\d)|Forbidden", proc.output())
    assert forbidden is None, proc.output()[-5000:]


@pytest.fixture(scope="module")
def worker(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    workdir = tmp_path_factory.mktemp("worker")
    env = _env(database, KUBETASKS_WORKER__METRICS_PORT="0", KUBETASKS_WORKER__QUEUES='["default"]',
               KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT="1", KUBETASKS_WORKER__RETRY_BACKOFF_BASE="0.05")
    proc = Process([str(BIN / "kubetasks"), "worker"], env, workdir / "worker.log", workdir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(controlplane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(str(controlplane.kubeconfig))


@pytest.fixture
def ns(kubectl: Kubectl, operator: Process) -> str:
    # One apiserver for the session: each test gets its own namespace (never deleted: no namespace controller).
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    return name


# -- helpers ----------------------------------------------------------------------------------------------


def apply(kubectl: Kubectl, ns: str, manifest: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", ns, "-f", "-", input=manifest, check=check)


def get(api: client.ApiClient, plural: str, ns: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, ns, plural, name)
        return found
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def listed(api: client.ApiClient, plural: str, ns: str, selector: str = "") -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, ns, plural,
                                                                      label_selector=selector)
    return sorted(found["items"], key=lambda o: o["metadata"]["name"])


def condition(body: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((body or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def status_of(api: client.ApiClient, plural: str, ns: str, name: str) -> dict[str, Any]:
    return dict((get(api, plural, ns, name) or {}).get("status") or {})


def wait(check: Callable[[], Any], what: str, timeout: float = 45) -> Any:
    return wait_for(check, timeout=timeout, interval=0.25, what=what)


def table(kubectl: Kubectl, *args: str) -> list[dict[str, str]]:
    """`kubectl get` as rows of {COLUMN: value}, split on the header's column starts."""
    lines = kubectl("get", *args).stdout.rstrip("\n").splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]  # columns are 2+ spaces apart
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
            for line in lines[1:]]


def sql(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with db.connect(dsn) as conn:
        cur = conn.execute(query, params)  # type: ignore[call-overload]
        return list(cur) if cur.description else []


def events(kubectl: Kubectl, ns: str, name: str) -> list[tuple[str, str]]:
    found = json.loads(kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}",
                               "-o", "json").stdout)["items"]
    return [(e["type"], e["reason"]) for e in found]


def taskrun(name: str, actor: str, **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": f"{GROUP}/{VERSION}", "kind": "TaskRun", "metadata": {"name": name},
                           "spec": {"actor": actor, **spec}})


def schedule(name: str, **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": f"{GROUP}/{VERSION}", "kind": "Schedule", "metadata": {"name": name},
                           "spec": spec})


# -- tests ------------------------------------------------------------------------------------------------


def test_schedule_runs_show_up_as_owned_taskruns(ns: str, kubectl: Kubectl, api: client.ApiClient, database: str,
                                                  worker: Process, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    apply(kubectl, ns, schedule("report", actor="t.record", args={"path": str(marks), "value": "run"},
                                schedule="0 3 * * *", timeZone="Europe/Berlin", successfulRunsHistoryLimit=2))
    wait(lambda: condition(get(api, "schedules", ns, "report"), "Ready").get("status") == "True", "Ready")
    (row,) = table(kubectl, "schedules", "-n", ns)
    assert list(row) == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "LAST SUCCESS",
                         "NEXT", "AGE"]
    assert (row["SCHEDULE"], row["TIMEZONE"], row["SUSPEND"], row["ACTIVE"]) == ("0 3 * * *", "Europe/Berlin",
                                                                                  "false", "0")
    assert row["NEXT"] == status_of(api, "schedules", ns, "report")["nextScheduleTime"]
    assert sql(database, "SELECT source FROM kubetasks.schedules WHERE name = %s", f"{ns}/report") == [
        {"source": "operator"}]

    # Make the tick due now; the operator's scheduler fires it as it would at 03:00 in Berlin.
    sql(database, "UPDATE kubetasks.schedules SET next_run = now() WHERE name = %s", f"{ns}/report")
    (run,) = wait(lambda: [tr for tr in listed(api, "taskruns", ns, "kubetasks.dev/schedule=report")
                           if (tr.get("status") or {}).get("state") == "successful"], "the first run to succeed")
    meta = run["metadata"]
    assert meta["name"] == f"report-{run['status']['taskId']}"
    assert meta["ownerReferences"][0]["kind"] == "Schedule" and meta["ownerReferences"][0]["controller"] is True
    assert run["spec"]["actor"] == "t.record" and run["spec"]["args"] == {"path": str(marks), "value": "run"}
    assert condition(run, "Succeeded")["status"] == "True"
    (tr_row,) = table(kubectl, "taskruns", "-n", ns)
    assert list(tr_row) == ["NAME", "ACTOR", "STATE", "ATTEMPT", "STARTED", "DURATION", "PROGRESS", "AGE"]
    assert (tr_row["ACTOR"], tr_row["STATE"], tr_row["ATTEMPT"]) == ("t.record", "successful", "1")
    (wide,) = table(kubectl, "tr", "-n", ns, "-o", "wide")
    assert (wide["QUEUE"], wide["SCHEDULE"], wide["MESSAGE"]) == ("default", "report", "Succeeded after 1 attempt")
    status = wait(lambda: (s := status_of(api, "schedules", ns, "report")).get("lastSuccessfulTime") and s,
                  "Last Success")
    assert status["lastRunState"] == "successful" and status["active"] == 0 and status["lastScheduleTime"]
    next_run = status["nextScheduleTime"]
    assert next_run > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # A trigger fires once per new value, without moving the next run; history is pruned to the limit.
    for value in ("first", "first", "second"):
        kubectl("annotate", "-n", ns, "schedule/report", f"kubetasks.dev/trigger={value}", "--overwrite")
        wait(lambda v=value: status_of(api, "schedules", ns, "report").get("lastTrigger") == v, f"trigger {value}")
    wait(lambda: marks.exists() and len(marks.read_text().splitlines()) == 3, "three executions in all")
    wait(lambda: [tr["metadata"]["name"] for tr in listed(api, "taskruns", ns, "kubetasks.dev/schedule=report")
                  if tr["status"].get("state") == "successful"] and
         len(listed(api, "taskruns", ns, "kubetasks.dev/schedule=report")) == 2, "pruning to 2 successful runs")
    assert status_of(api, "schedules", ns, "report")["nextScheduleTime"] == next_run
    assert ("Normal", "Triggered") in events(kubectl, ns, "report")

    # Suspend: no more runs, the Next column empties, the row is paused.
    kubectl("patch", "-n", ns, "schedule/report", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait(lambda: condition(get(api, "schedules", ns, "report"), "Suspended").get("status") == "True", "Suspended")
    (row,) = table(kubectl, "schedules", "-n", ns)
    assert (row["SUSPEND"], row["NEXT"]) == ("true", "")
    assert sql(database, "SELECT paused FROM kubetasks.schedules WHERE name = %s", f"{ns}/report") == [
        {"paused": True}]
    assert len(marks.read_text().splitlines()) == 3

    # Deleting the Schedule removes its row (the finalizer runs first); its TaskRuns are left to the garbage
    # collector, which this node-less control plane does not run.
    kubectl("delete", "-n", ns, "schedule/report", "--timeout=30s", timeout=45)
    assert sql(database, "SELECT name FROM kubetasks.schedules WHERE name = %s", f"{ns}/report") == []


def test_backfill_annotation_and_pause_after_failures(ns: str, kubectl: Kubectl, api: client.ApiClient,
                                                       database: str, worker: Process) -> None:
    apply(kubectl, ns, schedule("flaky", actor="t.fail", schedule="0 * * * *", pauseAfterFailures=2,
                                retries={"limit": 0}, failedRunsHistoryLimit=5))
    wait(lambda: condition(get(api, "schedules", ns, "flaky"), "Ready").get("status") == "True", "Ready")
    hour = int(time.time()) // 3600 * 3600
    value = (time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour - 3 * 3600)) + "/"
             + time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour - 2 * 3600)))  # two past ticks
    kubectl("annotate", "-n", ns, "schedule/flaky", f"kubetasks.dev/backfill={value}")
    wait(lambda: status_of(api, "schedules", ns, "flaky").get("lastBackfill") == value, "the backfill")
    assert ("Normal", "Backfilled") in events(kubectl, ns, "flaky")
    # Both backfilled runs fail on the worker: the second pauses the schedule, which the operator reports.
    suspended = wait(lambda: (c := condition(get(api, "schedules", ns, "flaky"), "Suspended")).get("reason")
                     == "PausedAfterFailures" and c, "paused after two failed runs", timeout=60)
    assert suspended["status"] == "True" and suspended["message"].startswith("2 failed runs in a row")
    wait(lambda: ("Warning", "PausedAfterFailures") in events(kubectl, ns, "flaky"), "the Event")
    assert sql(database, "SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name = %s",
               f"{ns}/flaky") == [{"n": 2}]


def test_taskrun_lifecycle_success_failure_and_retries(ns: str, kubectl: Kubectl, api: client.ApiClient,
                                                      worker: Process, tmp_path: Path) -> None:
    apply(kubectl, ns, "---\n".join([
        taskrun("ok", "t.record", args={"path": str(tmp_path / "ok"), "value": "x"}),
        taskrun("broken", "t.fail"),
        taskrun("flaky", "t.flaky", args={"path": str(tmp_path / "flaky"), "fail_times": 1},
                retries={"limit": 2}),
    ]))
    final = ("successful", "error")
    wait(lambda: all(status_of(api, "taskruns", ns, n).get("state") in final for n in ("ok", "broken", "flaky")),
         "all three runs to finish")
    ok = status_of(api, "taskruns", ns, "ok")
    assert ok["state"] == "successful" and ok["attempt"] == 1 and ok["taskId"] >= 1
    assert ok["startTime"] and ok["completionTime"] and ok["duration"]
    broken = get(api, "taskruns", ns, "broken")
    cond = condition(broken, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "Failed") and "bad input" in cond["message"]
    assert broken is not None and "bad input" in broken["status"]["message"]
    assert "bad input" in broken["status"]["logTail"]
    # The operator wrote status and its finalizer only: Kopf's bookkeeping is in status.kopf, not annotations.
    assert broken["metadata"]["finalizers"] == ["kubetasks.dev/finalizer"]
    assert not [a for a in broken["metadata"].get("annotations") or {} if "kopf" in a]
    assert "kopf" in broken["status"]
    flaky = status_of(api, "taskruns", ns, "flaky")
    assert (flaky["state"], flaky["attempt"], flaky["maxAttempts"]) == ("successful", 2, 3)
    assert "attempt 2" in flaky["logTail"]  # the actor's logging, captured by the worker
    wait(lambda: ("Warning", "Failed") in events(kubectl, ns, "broken"), "a Warning event for the failure")
    assert ("Normal", "Succeeded") in events(kubectl, ns, "ok")


def test_cancel_and_delete_cancel_the_task(ns: str, kubectl: Kubectl, api: client.ApiClient,
                                           database: str) -> None:
    # The "parked" queue has no worker: the tasks stay queued until cancelled.
    apply(kubectl, ns, taskrun("a", "t.noop", queue="parked") + "---\n" + taskrun("b", "t.noop", queue="parked"))
    for name in ("a", "b"):
        wait(lambda n=name: condition(get(api, "taskruns", ns, n), "Succeeded").get("reason") == "Queued", "Queued")
    task_b = status_of(api, "taskruns", ns, "b")["taskId"]
    kubectl("patch", "-n", ns, "taskrun/a", "--type=merge", "-p", '{"spec": {"cancel": true}}')
    wait(lambda: status_of(api, "taskruns", ns, "a").get("state") == "cancelled", "a cancelled")
    cond = condition(get(api, "taskruns", ns, "a"), "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "Cancelled")
    kubectl("delete", "-n", ns, "taskrun/b", "--timeout=30s", timeout=45)
    (row,) = sql(database, "SELECT state::text AS state, error FROM kubetasks.tasks WHERE id = %s", task_b)
    assert row == {"state": "cancelled", "error": f"TaskRun {ns}/b was deleted"}
    assert get(api, "taskruns", ns, "b") is None


def test_invalid_specs_are_refused_with_the_field_named(ns: str, kubectl: Kubectl, api: client.ApiClient,
                                                        database: str) -> None:
    apply(kubectl, ns, "---\n".join([
        taskrun("ghost", "t.nope"),
        schedule("badcron", actor="t.noop", schedule="61 * * * *"),
        schedule("badzone", actor="t.noop", schedule="@hourly", timeZone="Mars/Olympus"),
        schedule("badactor", actor="t.nope", schedule="@hourly"),
    ]))
    expected = {("taskruns", "ghost", "Succeeded"): "InvalidActor",
                ("schedules", "badcron", "Ready"): "InvalidSchedule",
                ("schedules", "badzone", "Ready"): "InvalidTimeZone",
                ("schedules", "badactor", "Ready"): "InvalidActor"}
    for (plural, name, type_), reason in expected.items():
        cond = wait(lambda p=plural, n=name, t=type_: condition(get(api, p, ns, n), t) or None, f"{name} refused")
        assert (cond["status"], cond["reason"]) == ("False", reason), cond
        wait(lambda n=name, r=reason: ("Warning", r) in events(kubectl, ns, n), f"{reason} event")
    assert sql(database, "SELECT count(*) AS n FROM kubetasks.schedules WHERE name LIKE %s", f"{ns}/%") == [{"n": 0}]
    assert sql(database, "SELECT count(*) AS n FROM kubetasks.tasks WHERE object_ref LIKE %s",
               f"taskrun/{ns}/%") == [{"n": 0}]
    # Fixing the spec makes it Ready and stores it.
    kubectl("patch", "-n", ns, "schedule/badzone", "--type=merge", "-p", '{"spec": {"timeZone": "Asia/Tokyo"}}')
    wait(lambda: condition(get(api, "schedules", ns, "badzone"), "Ready").get("status") == "True", "fixed")
    assert sql(database, "SELECT time_zone FROM kubetasks.schedules WHERE name = %s", f"{ns}/badzone") == [
        {"time_zone": "Asia/Tokyo"}]


@pytest.mark.parametrize(("manifest", "message"), [
    (schedule("x", actor="t.noop", schedule="@daily", concurrencyPolicy="Sometimes"), "Unsupported value"),
    (schedule("x", actor="1nope", schedule="@daily"), "should match"),
    (schedule("x", schedule="@daily"), "spec.actor: Required value"),
    (schedule("x" * 53, actor="t.noop", schedule="@daily"), "at most 52 characters"),
    (schedule("x", actor="t.noop", schedule="@daily", successfulRunsHistoryLimit=-1), "should be greater than"),
    (taskrun("x", "t.noop", surprise=True), 'unknown field "spec.surprise"'),
    (taskrun("x", "t.noop", timeLimitSeconds=0), "should be greater than 0"),
    (yaml.safe_dump({"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool", "metadata": {"name": "x"},
                     "spec": {"scaleTargetRef": {"name": "w"}, "minReplicas": 3, "maxReplicas": 2}}),
     "minReplicas must not exceed maxReplicas"),
])
def test_the_apiserver_rejects_invalid_manifests(ns: str, kubectl: Kubectl, manifest: str, message: str) -> None:
    proc = apply(kubectl, ns, manifest, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_cancel_cannot_be_undone_and_spec_is_immutable(ns: str, kubectl: Kubectl, api: client.ApiClient) -> None:
    apply(kubectl, ns, taskrun("c", "t.noop", queue="parked", cancel=True))
    wait(lambda: status_of(api, "taskruns", ns, "c").get("state") == "cancelled", "cancelled at creation")
    undo = kubectl("patch", "-n", ns, "taskrun/c", "--type=merge", "-p", '{"spec": {"cancel": false}}', check=False)
    assert undo.returncode != 0 and "cannot be un-cancelled" in undo.stderr
    swap = kubectl("patch", "-n", ns, "taskrun/c", "--type=merge", "-p", '{"spec": {"actor": "t.fail"}}', check=False)
    assert swap.returncode != 0 and "immutable" in swap.stderr


def test_workerpool_scales_the_deployment_up_and_back_down(ns: str, kubectl: Kubectl, api: client.ApiClient) -> None:
    apply(kubectl, ns, yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "workers"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "w"}},
                  "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [
                      {"name": "worker", "image": "kubetasks:test",
                       "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "2"}]}]}}}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool", "metadata": {"name": "pool"},
         "spec": {"scaleTargetRef": {"name": "workers"}, "queues": ["pool-q"], "minReplicas": 0, "maxReplicas": 5,
                  "scaleDownStabilizationSeconds": 2, "pollingIntervalSeconds": 1}},
    ]))
    apps = client.AppsV1Api(api)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment_scale("workers", ns).spec.replicas or 0)

    wait(lambda: replicas() == 0, "an idle pool to scale to zero")
    # Five runnable tasks at 2 per replica -> 3 replicas; a task due in an hour needs no worker yet.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    apply(kubectl, ns, "---\n".join([taskrun(f"job-{i}", "t.noop", queue="pool-q") for i in range(5)]
                                    + [taskrun("later", "t.noop", queue="pool-q", runAt=later)]))
    # A pass scales the Deployment before it writes its status: wait for both, or the status read may be the
    # previous pass's (taken while the operator was still turning the TaskRuns into rows).
    wait(lambda: replicas() == 3 and status_of(api, "workerpools", ns, "pool").get("desired") == 3, "scale up to 3")
    status = status_of(api, "workerpools", ns, "pool")
    assert (status["desired"], status["queued"], status["running"], status["concurrency"]) == (3, 5, 0, 2)
    (row,) = table(kubectl, "workerpools", "-n", ns)
    assert list(row) == ["NAME", "TARGET", "MIN", "MAX", "DESIRED", "QUEUED", "RUNNING", "AGE"]
    assert (row["TARGET"], row["MIN"], row["MAX"], row["DESIRED"], row["QUEUED"]) == ("workers", "0", "5", "3", "5")
    # The work goes away (cancelled): after the stabilization window the pool is back at zero.
    for i in range(5):
        kubectl("patch", "-n", ns, f"taskrun/job-{i}", "--type=merge", "-p", '{"spec": {"cancel": true}}')
    wait(lambda: replicas() == 0, "scale back down to 0")
    assert ("Normal", "Scaled") in events(kubectl, ns, "pool")


def test_workerpool_leaves_out_held_tasks_and_holds_paused_replicas(ns: str, kubectl: Kubectl,
                                                                     api: client.ApiClient, database: str) -> None:
    """The runbook: pause the pool at 0 replicas (the autoscaler leaves it there with work waiting), then resume
    autoscaling; and a paused queue's tasks need no worker."""
    name = f"hold-{ns}"
    apply(kubectl, ns, yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "workers"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "w"}},
                  "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [
                      {"name": "worker", "image": "kubetasks:test",
                       "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "2"}]}]}}}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool", "metadata": {"name": "pool"},
         "spec": {"scaleTargetRef": {"name": "workers"}, "queues": [name], "minReplicas": 0, "maxReplicas": 5,
                  "scaleDownStabilizationSeconds": 2, "pollingIntervalSeconds": 1}},
    ]))
    apps = client.AppsV1Api(api)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment_scale("workers", ns).spec.replicas or 0)

    wait(lambda: replicas() == 0, "an idle pool to scale to zero")
    apply(kubectl, ns, "---\n".join(taskrun(f"job-{i}", "t.noop", queue=name) for i in range(4)))
    wait(lambda: replicas() == 2, "scale up to 2 for 4 tasks at 2 per replica")
    with db.connect(database) as conn:
        controls.set_paused(conn, name, True)
        wait(lambda: replicas() == 0, "a paused queue's tasks to need no worker")
        wait(lambda: status_of(api, "workerpools", ns, "pool").get("held") == 4, "status.held")
        controls.set_paused(conn, name, False)
    wait(lambda: replicas() == 2, "back to 2 once the queue is resumed")

    kubectl("annotate", "-n", ns, "workerpool/pool", "kubetasks.dev/paused-replicas=0")
    wait(lambda: replicas() == 0, "paused replicas to scale the pool down")
    wait(lambda: (lambda s: s.get("pausedReplicas") == 0 and s.get("queued") == 4
                  and condition({"status": s}, "Ready").get("reason") == "Paused")(
        status_of(api, "workerpools", ns, "pool")), "a pass that measured the waiting work and held 0")
    assert replicas() == 0
    kubectl("annotate", "-n", ns, "workerpool/pool", "kubetasks.dev/paused-replicas-")
    wait(lambda: replicas() == 2, "autoscaling again once the annotation is gone")
    for i in range(4):
        kubectl("patch", "-n", ns, f"taskrun/job-{i}", "--type=merge", "-p", '{"spec": {"cancel": true}}')


def test_a_second_operator_creates_no_duplicates(ns: str, kubectl: Kubectl, api: client.ApiClient, database: str,
                                                 operator_kubeconfig: Path, tmp_path: Path) -> None:
    """Two operators see every object (standalone, no Kopf peering): the database keeps one task per TaskRun
    and one run per trigger value. The second one's first look is also what an operator restart does."""
    second = start_operator(database, operator_kubeconfig, tmp_path, name="second")
    try:
        apply(kubectl, ns, "---\n".join([taskrun(f"dup-{i}", "t.noop", queue="parked") for i in range(4)]
                                        + [schedule("twice", actor="t.noop", queue="parked", schedule="@yearly")]))
        wait(lambda: all(f"[{ns}/dup-{i}] Handler 'taskrun_changed' succeeded" in second.output()
                         for i in range(4)), "the second operator to handle every TaskRun")
        wait(lambda: all(status_of(api, "taskruns", ns, f"dup-{i}").get("taskId") for i in range(4)), "task ids")
        kubectl("annotate", "-n", ns, "schedule/twice", "kubetasks.dev/trigger=once")
        wait(lambda: status_of(api, "schedules", ns, "twice").get("lastTrigger") == "once", "the trigger")
        wait(lambda: second.output().count(f"[{ns}/twice] Handler 'schedule_changed' succeeded") >= 2,
             "the second operator to see the trigger")
    finally:
        second.stop()
    rows = sql(database, "SELECT object_ref, count(*) AS n FROM kubetasks.tasks WHERE object_ref LIKE %s "
                         "GROUP BY object_ref", f"taskrun/{ns}/%")
    assert len(rows) == 4 and all(r["n"] == 1 for r in rows), rows
    assert sql(database, "SELECT count(*) AS n FROM kubetasks.tasks WHERE schedule_name = %s",
               f"{ns}/twice") == [{"n": 1}]


def schedule_requests(kubectl: Kubectl) -> collections.Counter[str]:
    """Requests the API server has served for Schedules and TaskRuns so far, by verb and resource, watches
    left out."""
    served: collections.Counter[str] = collections.Counter()
    for line in kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_request_total{") and 'group="kubetasks.dev"' in line \
                and 'verb="WATCH"' not in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("resource") in ("schedules", "taskruns"):
                sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
                served[f"{labels['verb']} {labels['resource']}{sub}"] += int(float(line.rsplit(" ", 1)[1]))
    return served


def test_idle_schedules_cost_the_apiserver_nothing_and_row_changes_still_show(
        ns: str, kubectl: Kubectl, api: client.ApiClient, database: str) -> None:
    count = 30
    apply(kubectl, ns, "---\n".join(schedule(f"idle-{i}", actor="t.noop", schedule="0 3 1 1 *")
                                    for i in range(count)))
    wait(lambda: all(condition(get(api, "schedules", ns, f"idle-{i}"), "Ready").get("status") == "True"
                     for i in range(count)), "all Ready", timeout=90)
    # A few sweep passes (every 2 s here) with nothing changed: only the round-robin slice of the safety-net
    # resync (one Schedule of all the tests' per pass at this size) may reach the API server. Polling each
    # Schedule, as a timer per Schedule would, costs 2 requests per Schedule per pass: 180 here.
    before = schedule_requests(kubectl)
    time.sleep(6.5)  # an observation window: an absence of requests cannot be awaited
    made = schedule_requests(kubectl) - before
    assert made.total() < count, f"{made} for {count} idle Schedules in 3 passes"

    # A change that only the row shows (here the next tick moved by hand, as a skipped tick moves it)
    # reaches the status at the next pass.
    sql(database, "UPDATE kubetasks.schedules SET next_run = '2031-01-01T03:00:00Z' WHERE name = %s",
        f"{ns}/idle-7")
    wait(lambda: status_of(api, "schedules", ns, "idle-7").get("nextScheduleTime") == "2031-01-01T03:00:00Z",
         "the moved tick in the status", timeout=20)
