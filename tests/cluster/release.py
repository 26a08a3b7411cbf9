"""Helpers for the cluster suite: a Helm release of charts/kubetasks on the local cluster, and small
kubectl/SQL readers. Only the product's interfaces are used: helm, kubectl, the `kubetasks` CLI in
pods, SQL on the queue's tables."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml
from psycopg.rows import dict_row

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kubetasks"
ACTORS_DIR = Path(__file__).resolve().parent  # holds cluster_actors.py, mounted into the pods
GROUP, VERSION = "kubetasks.dev", "v1alpha1"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
T = TypeVar("T")
# Measurements of this session, printed at its end by conftest's terminal summary.
REPORT: dict[str, Any] = {}


def wait(check: Callable[[], T], what: str, timeout: float = 90.0, interval: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)  # polling interval, bounded by the deadline
        value = check()
    return value


def sql(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(query, params or None)
        return list(cur.fetchall()) if cur.description else []


@dataclass
class Release:
    name: str
    namespace: str
    helm: str
    kubeconfig: Path
    kubectl: Kubectl
    database_url: str
    values: dict[str, Any]

    @property
    def fullname(self) -> str:
        return self.name if "kubetasks" in self.name else f"{self.name}-kubetasks"

    def install(self, workdir: Path, timeout: float = 240) -> float:
        """`helm install --wait`; returns the seconds it took."""
        values_file = workdir / f"values-{self.name}.yaml"
        values_file.write_text(yaml.safe_dump(self.values))
        began = time.monotonic()
        self.helm_run("install", self.name, str(CHART), "--namespace", self.namespace, "--create-namespace",
                      "-f", str(values_file), "--wait", f"--timeout={int(timeout)}s", timeout=timeout + 30)
        return time.monotonic() - began

    def uninstall(self, wait: bool = False) -> None:
        self.helm_run("uninstall", self.name, "--namespace", self.namespace, *(["--wait"] if wait else []),
                      "--timeout=120s", timeout=150, check=False)

    def helm_run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.helm, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}\n"
                                 f"{self.describe()}")
        return proc

    # -- readers ---------------------------------------------------------------------------------

    def get(self, kind: str, name: str = "", *selectors: str) -> Any:
        args = ["get", kind, *([name] if name else []), "-n", self.namespace, "-o", "json", *selectors]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def pods(self, component: str) -> list[dict[str, Any]]:
        found = self.get("pods", "", "-l", f"app.kubernetes.io/instance={self.name},"
                                           f"app.kubernetes.io/component={component}")
        return list(found["items"]) if found else []

    def ready_pods(self, component: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(component) if pod_ready(p) and not p["metadata"].get("deletionTimestamp")]

    def replicas(self) -> int:
        scale = self.get("deployment", f"{self.fullname}-worker")
        return int((scale or {}).get("spec", {}).get("replicas") or 0)

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict((self.get(plural, name) or {}).get("status") or {})

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def describe(self) -> str:
        out = self.kubectl("get", "pods,deploy,workerpools", "-n", self.namespace, "-o", "wide", check=False)
        events = self.kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False)
        return f"{out.stdout}{out.stderr}\n{events.stdout[-3000:]}"


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def taskrun(name: str, actor: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TaskRun", "metadata": {"name": name},
            "spec": {"actor": actor, **spec}}


def schedule(name: str, actor: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Schedule", "metadata": {"name": name},
            "spec": {"actor": actor, **spec}}


def chart_values(*, image: tuple[str, str], database_url: str, server_port: int, ledger: Path,
                 operator_port: int, metrics_port: int, queues: list[str], max_replicas: int,
                 **overrides: Any) -> dict[str, Any]:
    """Values for the local cluster: the loaded image, host network, the actors mounted, loopback API."""
    python_path = {"name": "PYTHONPATH", "value": "/kubetasks-test/actors"}
    fast = [
        python_path,
        # Prompt recovery in tests: dead attempts are found within seconds, not the default 15 s.
        {"name": "KUBETASKS_WORKER__RESCUE_INTERVAL", "value": "2"},
        {"name": "KUBETASKS_WORKER__TASK_DEFAULT_TIME_LIMIT", "value": "30"},
    ]
    values: dict[str, Any] = {
        "image": {"repository": image[0], "tag": image[1], "pullPolicy": "Never"},
        "database": {"url": database_url},
        "modules": ["cluster_actors"],
        "hostNetwork": True,
        "extraVolumes": [
            {"name": "actors", "hostPath": {"path": str(ACTORS_DIR), "type": "Directory"}},
            {"name": "ledger", "hostPath": {"path": str(ledger), "type": "Directory"}},
        ],
        "extraVolumeMounts": [
            {"name": "actors", "mountPath": "/kubetasks-test/actors", "readOnly": True},
            {"name": "ledger", "mountPath": str(ledger)},
        ],
        "operator": {
            "healthPort": operator_port,
            "resyncIntervalSeconds": 5,
            "extraEnv": [
                # No Service IP is routed here: the operator talks to the apiserver's loopback address.
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(server_port)},
                *fast,
            ],
        },
        "worker": {
            "queues": queues,
            "threads": 4,
            "metricsPort": metrics_port,
            # Above the longest time limit (30 s): a scale-down lets every running task finish.
            "terminationGracePeriodSeconds": 45,
            "extraEnv": fast,
        },
        # Endpoints refuse loopback addresses ("may not be in the loopback range"): no Service here.
        "metrics": {"service": {"enabled": False}},
        "workerPool": {"minReplicas": 0, "maxReplicas": max_replicas, "scaleDownStabilizationSeconds": 10,
                       "pollingIntervalSeconds": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values
