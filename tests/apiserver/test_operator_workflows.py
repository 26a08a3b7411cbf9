"""Workflows seen through the operator, end to end: a Schedule whose actor starts a workflow, its TaskRun
showing the step progress, and the children staying rows in the database (never custom resources).

The real operator process and a real worker process on a real kube-apiserver, as in test_operator_e2e.py
(whose helpers this reuses), with the workflow tests' actors (tests/workflows/flow_actors.py) loaded too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import Kubectl
from kubernetes import client
from test_operator_e2e import (
    BIN,
    REPO,
    RUNTIME,
    Process,
    _env,
    apply,
    condition,
    events,
    get,
    listed,
    schedule,
    sql,
    start_operator,
    status_of,
    table,
    wait,
)
from test_operator_e2e import api as api  # the fixtures, re-exported so pytest finds them here
from test_operator_e2e import crds as crds
from test_operator_e2e import operator_kubeconfig as operator_kubeconfig

from kubetasks.worker import pgserver

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

FLOWS = REPO / "tests" / "workflows"  # flow_actors.py
PAGES = 300


def _flow_env() -> dict[str, str]:
    return {"KUBETASKS_WORKER__MODULES": json.dumps(["worker_actors", "flow_actors"]),
            "PYTHONPATH": f"{RUNTIME}:{FLOWS}"}


@pytest.fixture
def database(pg_server: pgserver.LocalPostgres) -> str:
    url: str = pg_server.create_database(f"operator_workflows_{os.getpid()}", template="kubetasks_template")
    return url


@pytest.fixture
def ns(kubectl: Kubectl, crds: None) -> str:
    name = f"w-{os.urandom(4).hex()}"
    kubectl("create", "namespace", name)
    return name


@pytest.fixture
def operator(database: str, operator_kubeconfig: Path, ns: str, tmp_path: Path) -> Iterator[Process]:
    """An operator of this test's namespace only (the session's apiserver holds other tests' objects)."""
    proc = start_operator(database, operator_kubeconfig, tmp_path, namespace=ns,
                          KUBETASKS_OPERATOR__WORKFLOW_PROGRESS_INTERVAL="0.5", **_flow_env())
    yield proc
    proc.stop()


@pytest.fixture
def worker(database: str, tmp_path: Path) -> Iterator[Process]:
    env = {**_env(database, KUBETASKS_WORKER__METRICS_PORT="0", KUBETASKS_WORKER__QUEUES='["default"]',
                  KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT="1", KUBETASKS_WORKER__THREADS="8"), **_flow_env()}
    proc = Process([str(BIN / "kubetasks"), "worker"], env, tmp_path / "worker.log", tmp_path)
    yield proc
    proc.stop()


def test_a_schedule_starts_a_workflow_and_its_taskrun_follows_the_steps(
        ns: str, kubectl: Kubectl, api: client.ApiClient, database: str, operator: Process, worker: Process,
        tmp_path: Path) -> None:
    release = tmp_path / "release"  # the pages wait for it: the progress is looked at while they do
    apply(kubectl, ns, schedule("ldap", actor="wf.starter", schedule="@yearly",
                                args={"path": str(tmp_path / "runs"), "pages": PAGES, "release": str(release)}))
    wait(lambda: condition(get(api, "schedules", ns, "ldap"), "Ready").get("status") == "True", "Ready")
    kubectl("annotate", "-n", ns, "schedule/ldap", "kubetasks.dev/trigger=now")

    def run() -> dict[str, Any] | None:
        found = listed(api, "taskruns", ns, "kubetasks.dev/schedule=ldap")
        return found[0] if found and (found[0].get("status") or {}).get("workflow") else None

    first = wait(run, "the run's TaskRun to show its workflow")
    name = first["metadata"]["name"]
    # The starter returned at once: its own state is successful while the workflow runs its first step.
    running = wait(lambda: (s := status_of(api, "taskruns", ns, name))["state"] == "successful" and s,
                   "the starter to finish")
    workflow = running["workflow"]
    assert workflow["state"] == "running" and running["progress"] == f"0/{PAGES}"
    assert [(s["name"], s["state"], s["done"], s["total"]) for s in workflow["steps"]] == [
        ("a", "running", 0, PAGES), ("b", "waiting", 0, 0)]
    (row,) = table(kubectl, "taskruns", "-n", ns)
    assert (row["NAME"], row["STATE"], row["PROGRESS"]) == (name, "successful", f"0/{PAGES}")
    (wide,) = table(kubectl, "tr", "-n", ns, "-o", "wide")
    assert wide["WORKFLOW"] == "running"
    print(kubectl("get", "tr", "-n", ns).stdout)  # what the README shows (pytest -s)

    release.touch()
    done = wait(lambda: (s := status_of(api, "taskruns", ns, name))["workflow"]["state"] == "successful" and s,
                "the workflow to finish", timeout=90)
    assert done["progress"] == f"{PAGES + 1}/{PAGES + 1}"
    assert [(s["name"], s["state"], s["done"], s["succeeded"]) for s in done["workflow"]["steps"]] == [
        ("a", "done", PAGES, PAGES), ("b", "done", 1, 1)]
    wf = done["workflow"]["taskId"]
    assert sql(database, "SELECT result AS wf FROM kubetasks.tasks WHERE id = %s", done["taskId"]) == [{"wf": wf}]
    wait(lambda: ("Normal", "WorkflowSucceeded") in events(kubectl, ns, name), "the WorkflowSucceeded Event")
    # The children are rows only: the Schedule's one run is the namespace's one TaskRun.
    assert sql(database, "SELECT count(*) AS n FROM kubetasks.tasks WHERE parent_id = %s", wf) == [
        {"n": PAGES + 1}]
    assert [tr["metadata"]["name"] for tr in listed(api, "taskruns", ns)] == [name]
    (row,) = table(kubectl, "taskruns", "-n", ns)
    assert row["PROGRESS"] == f"{PAGES + 1}/{PAGES + 1}"
    print(kubectl("get", "tr", "-n", ns, "-o", "wide").stdout)
    print(kubectl("get", "tr", "-n", ns, name, "-o", "jsonpath={.status.workflow}").stdout)
