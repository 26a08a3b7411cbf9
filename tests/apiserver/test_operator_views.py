"""The operator's views (`operator/views.py`) on a real kube-apiserver: one LIST of a kind across the cluster,
then a WATCH that applies each change; a new listing replaces what a gap missed; `stop` ends the watch at
once rather than at the watch's timeout."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane, Kubectl
from kubernetes import config

from kubetasks.operator import resources
from kubetasks.operator.kube import Kube
from kubetasks.operator.views import Views, ViewWatch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kube(controlplane: ControlPlane, kubectl: Kubectl) -> Kube:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    return Kube(config.new_client_from_config(str(controlplane.kubeconfig)))  # type: ignore[no-untyped-call]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def taskrun(kube: Kube, ns: str, name: str, schedule: str | None = None) -> None:
    labels = {resources.SCHEDULE_LABEL: schedule} if schedule else {}
    kube.create(resources.TASKRUN, ns, {"apiVersion": f"{resources.GROUP}/{resources.VERSION}", "kind": "TaskRun",
                                        "metadata": {"name": name, "labels": labels,
                                                     "annotations": {"note": "x" * 200}},
                                        "spec": {"actor": "examples.hello", "args": {"big": "y" * 500}}})


def names(found: list[dict[str, Any]] | None) -> set[str]:
    return {view["metadata"]["name"] for view in found or ()}


def test_views_follow_the_cluster_relist_after_a_gap_and_stop_at_once(kube: Kube, kubectl: Kubectl) -> None:
    ns = f"views-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    taskrun(kube, ns, "a", schedule="nightly")
    taskrun(kube, ns, "b")
    views = Views()
    assert views.get(resources.TASKRUN, ns, "a") is None and views.children(ns, "nightly") is None  # not listed

    watch = ViewWatch(kube, views, resources.TASKRUN)
    watch.start()
    try:
        wait_for(lambda: views.ready(resources.TASKRUN), "the first listing")
        assert names(views.children(ns, "nightly")) == {"a"}
        seen = views.get(resources.TASKRUN, ns, "b")
        assert seen is not None and seen["metadata"]["uid"]
        assert "spec" not in seen and "managedFields" not in seen["metadata"] and "annotations" not in seen["metadata"]

        taskrun(kube, ns, "c", schedule="nightly")
        kube.patch_status(resources.TASKRUN, ns, "a", {"state": "running"})
        kube.delete(resources.TASKRUN, ns, "b")
        wait_for(lambda: names(views.children(ns, "nightly")) == {"a", "c"}, "c among nightly's runs")
        wait_for(lambda: (views.get(resources.TASKRUN, ns, "a") or {}).get("status", {}).get("state") == "running",
                 "a's new status")
        wait_for(lambda: views.get(resources.TASKRUN, ns, "b") is None, "b gone")
    finally:
        began = time.monotonic()
        watch.stop()
        watch.join(10)
    assert not watch.is_alive() and time.monotonic() - began < 3  # not the watch's 300 s timeout

    kube.delete(resources.TASKRUN, ns, "c")  # while nothing watches: only a new listing can tell
    assert views.get(resources.TASKRUN, ns, "c") is not None
    again = ViewWatch(kube, views, resources.TASKRUN)
    again.start()
    try:
        wait_for(lambda: views.get(resources.TASKRUN, ns, "c") is None, "c dropped by the new listing")
        assert names(views.children(ns, "nightly")) == {"a"}
    finally:
        again.stop()
        again.join(10)
