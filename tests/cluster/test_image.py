"""The built image itself (kubetasks:dev from .ci/images.sh), run with containerd on a node of the local
cluster: `kubetasks migrate`, `kubetasks worker` and the operator (`kopf run`) start and do their job as
the image's unprivileged user, on the host's loopback network."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localcluster import LocalCluster, controlplane, free_port
from release import REPORT, sql, wait

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

IMAGE = "docker.io/library/kubetasks:dev"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Containers:
    """`ctr run` on node 0's containerd; every container started is killed and removed at the end."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.node = cluster.nodes[0]
        self.started: list[str] = []

    def run(self, name: str, *argv: str, env: dict[str, str], detach: bool = False,
            mounts: tuple[tuple[Path, str], ...] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
        args = ["run", "--net-host", *(["-d"] if detach else ["--rm"])]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for src, dst in mounts:
            args += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:ro"]
        self.started.append(name)
        return self.cluster.ctr(self.node, *args, IMAGE, name, *argv, timeout=timeout, check=False)

    def stop(self, name: str, timeout: float = 30) -> bool:
        """SIGTERM, then wait for the task to exit; False if it had to be killed."""
        self.cluster.ctr(self.node, "tasks", "kill", "-s", "SIGTERM", name, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.cluster.ctr(self.node, "tasks", "ls", check=False).stdout
            row = next((line.split() for line in listed.splitlines() if line.startswith(name + " ")), None)
            if row is None or row[-1] == "STOPPED":
                return True
            time.sleep(0.2)  # polling interval, bounded by the deadline
        self.cluster.ctr(self.node, "tasks", "kill", "-s", "SIGKILL", name, check=False)
        return False

    def cleanup(self) -> None:
        for name in self.started:
            self.cluster.ctr(self.node, "tasks", "kill", "-s", "SIGKILL", name, check=False)
            for _ in range(30):
                if self.cluster.ctr(self.node, "tasks", "delete", name, check=False).returncode != 0:
                    break
                time.sleep(0.1)  # the task was just killed
            self.cluster.ctr(self.node, "containers", "delete", name, check=False)


@pytest.fixture
def containers(cluster: LocalCluster) -> Iterator[Containers]:
    c = Containers(cluster)
    yield c
    c.cleanup()


@pytest.fixture
def fresh_database(pg_server: Any) -> str:
    return str(pg_server.create_database(f"image_{os.getpid()}_{time.monotonic_ns()}"))


def test_image_is_small_enough_and_runs_as_uid_10001(cluster: LocalCluster, containers: Containers) -> None:
    listed = cluster.ctr(cluster.nodes[0], "images", "ls").stdout
    line = next(line for line in listed.splitlines() if line.startswith(IMAGE + " "))
    REPORT["image (compressed layers, ctr images ls)"] = " ".join(line.split()[3:5])
    proc = containers.run("kt-id", "id", "-u", env={})
    assert proc.returncode == 0 and proc.stdout.strip() == "10001", proc.stderr


def test_migrate_then_worker_starts_and_serves_its_probes(containers: Containers, fresh_database: str) -> None:
    env = {"KUBETASKS_DATABASE__URL": fresh_database}
    proc = containers.run("kt-migrate", "kubetasks", "migrate", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sql(fresh_database, "SELECT to_regclass('kubetasks.tasks') IS NOT NULL AS ok") == [{"ok": True}]
    port = free_port()
    containers.run("kt-worker", "kubetasks", "worker", detach=True, env={
        **env, "KUBETASKS_WORKER__METRICS_HOST": "127.0.0.1", "KUBETASKS_WORKER__METRICS_PORT": str(port)})
    wait(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), "the worker's /readyz in the container", timeout=60)
    assert http_ok(f"http://127.0.0.1:{port}/healthz")
    assert containers.stop("kt-worker")  # SIGTERM: drains and exits


def test_operator_starts_and_answers_its_liveness_probe(cluster: LocalCluster, containers: Containers,
                                                        fresh_database: str, tmp_path: Path) -> None:
    # A self-contained kubeconfig the image's user can read (the cluster's points at root-only key files).
    kubeconfig = tmp_path / "kube" / "config"
    kubeconfig.parent.mkdir()
    kubectl = controlplane.kubectl_binary() or "kubectl"
    flat = subprocess.run([kubectl, "--kubeconfig", str(cluster.kubeconfig), "config", "view", "--raw", "--flatten"],
                          capture_output=True, text=True, check=True).stdout
    kubeconfig.write_text(flat)
    kubeconfig.parent.chmod(0o755)
    kubeconfig.chmod(0o644)
    env = {"KUBETASKS_DATABASE__URL": fresh_database, "KUBECONFIG": "/kube/config",
           "KUBETASKS_OPERATOR__VALIDATE_ACTORS": "false"}
    assert containers.run("kt-migrate2", "kubetasks", "migrate", env=env).returncode == 0
    port = free_port()
    containers.run("kt-operator", "kopf", "run", "-m", "kubetasks.operator.handlers", "--standalone",
                   "--all-namespaces", f"--liveness=http://127.0.0.1:{port}/healthz", detach=True, env=env,
                   mounts=((kubeconfig.parent, "/kube"),))
    wait(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), "the operator's liveness endpoint", timeout=90)
    assert containers.stop("kt-operator")
