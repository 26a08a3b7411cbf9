"""The Helm chart: static checks that always run, and a real `helm template`/`helm lint` when helm exists.

helm is found as $HELM, on PATH, or in the cache that `charts/helm.sh` fills by building it from helm's Go
module (set KUBETASKS_BUILD_HELM=1 to let this test run the build). Without it the rendering tests skip,
saying so, and only the static checks run; the manifests are then also not checked by the apiserver
(tests/apiserver/test_operator_chart.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_generator import generate as crdgen

from kubetasks.operator import resources
from kubetasks.worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetasks"
HELM_VERSION = os.environ.get("KUBETASKS_HELM_VERSION", "3.22.0")
DSN = "postgresql://kubetasks:secret@postgres:5432/kubetasks"
KUBE_VERSION = "1.37.0"  # helm assumes v1.20 offline, below the chart's kubeVersion


def find_helm() -> str | None:
    candidates = [os.environ.get("HELM"), shutil.which("helm"),
                  str(Path(os.environ.get("KUBETASKS_CACHE") or Path.home() / ".cache" / "kubetasks")
                      / "helm" / f"v{HELM_VERSION}" / "helm")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("KUBETASKS_BUILD_HELM") == "1":
        proc = subprocess.run(["bash", str(REPO / "charts" / "helm.sh")], capture_output=True, text=True,
                              timeout=1800, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip().splitlines()[-1]
    return None


def render(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as a list of objects (CRDs included)."""
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found (set HELM, run charts/helm.sh, or KUBETASKS_BUILD_HELM=1): "
                    "the chart was not rendered, only checked statically")
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--namespace", "tasks", "--include-crds",
                           "--kube-version", KUBE_VERSION, *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# -- static checks: no helm needed -----------------------------------------------------------------------


def test_chart_metadata_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "kubetasks" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["database"]["existingSecretKey"] == "url" and values["workerPool"]["enabled"] is True


def test_every_values_key_is_documented() -> None:
    """Each top-level key of values.yaml has a comment right above it (what `helm show values` prints)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Za-z]", line):
            assert (index > 0 and lines[index - 1].startswith("#")) or _section_documented(lines, index), line


def _section_documented(lines: list[str], index: int) -> bool:
    # A top-level key whose children carry the comments (operator:, worker:) counts as documented.
    return any(child.strip().startswith("#") for child in lines[index + 1:index + 4])


def test_templates_are_balanced_and_reference_existing_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in sorted((CHART / "templates").glob("*")):
        text = path.read_text()
        assert text.count("{{") == text.count("}}"), path.name
        actions = re.findall(r"{{-?\s*(if|with|range|define|end)\b", text)
        opened = sum(1 for a in actions if a != "end")
        assert opened == actions.count("end"), f"{path.name}: {opened} blocks opened, {actions.count('end')} ended"
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            node: Any = values
            for part in ref.split("."):
                assert isinstance(node, dict) and part in node, f"{path.name}: .Values.{ref} is not in values.yaml"
                node = node[part]


def test_chart_crds_are_the_generated_ones() -> None:
    for name, text in crdgen.files().items():
        assert (CHART / "crds" / name).read_text() == text, f"run python crds/generate.py ({name})"


def test_operator_rules_are_least_privilege() -> None:
    rules = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
    verbs = {(group, res): set(rule["verbs"]) for rule in rules for group in rule["apiGroups"]
             for res in rule["resources"]}
    assert all("*" not in v for v in verbs.values()) and all("*" not in r for _, r in verbs)
    assert verbs[("apps", "deployments")] == {"get"}  # scaled through /scale only, never edited
    assert verbs[("apps", "deployments/scale")] == {"get", "patch"}
    assert verbs[("", "events")] == {"create"}
    assert verbs[("", "namespaces")] == {"list", "watch"}  # Kopf follows the namespaces it serves
    for plural in ("schedules", "taskruns", "workerpools"):
        assert "update" not in verbs[("kubetasks.dev", plural)]  # status and finalizers only, never spec
        assert verbs[("kubetasks.dev", f"{plural}/status")] == {"get", "patch"}
    assert not any(group == "" and res in ("secrets", "pods") for group, res in verbs)


# -- rendering: needs helm --------------------------------------------------------------------------------


def test_helm_lint() -> None:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found: `helm lint` skipped")
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                           "--set", f"database.url={DSN}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_renders_every_piece() -> None:
    docs = render("--set", f"database.url={DSN}", "--set", "modules={myapp.tasks}")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["CustomResourceDefinition"] * 3 + ["ServiceAccount"] * 2 + [
        "ClusterRole", "ClusterRoleBinding", "Secret", "Deployment", "Deployment", "WorkerPool", "Service"])
    crds = by_kind(docs, "CustomResourceDefinition")
    for kind in resources.KINDS:
        assert crds[kind.crd_name] == yaml.safe_load((REPO / "crds" / f"{kind.plural}.yaml").read_text())
    role = by_kind(docs, "ClusterRole")["kt-kubetasks-operator"]
    assert role["rules"] == yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
    (binding,) = by_kind(docs, "ClusterRoleBinding").values()
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetasks-operator", "namespace": "tasks"}]
    assert by_kind(docs, "Secret")["kt-kubetasks-database"]["stringData"] == {"url": DSN}

    deployments = by_kind(docs, "Deployment")
    operator = deployments["kt-kubetasks-operator"]["spec"]["template"]["spec"]
    (container,) = operator["containers"]
    assert container["command"][:4] == ["kopf", "run", "-m", "kubetasks.operator.handlers"]
    assert "--all-namespaces" in container["command"] and "--standalone" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETASKS_DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "kt-kubetasks-database",
                                                                          "key": "url"}
    assert env["KUBETASKS_WORKER__MODULES"]["value"] == '["myapp.tasks"]'
    assert operator["initContainers"][0]["command"] == ["kubetasks", "migrate"]
    assert operator["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    worker = deployments["kt-kubetasks-worker"]
    assert "replicas" not in worker["spec"]  # the WorkerPool owns the count
    worker_pod = worker["spec"]["template"]["spec"]
    assert worker_pod["containers"][0]["command"] == ["kubetasks", "worker"]
    assert worker_pod["automountServiceAccountToken"] is False
    pool = by_kind(docs, "WorkerPool")["kt-kubetasks-worker"]
    spec = resources.WorkerPoolSpec.model_validate(pool["spec"])  # the CRD's own model accepts it
    assert spec.scale_target_ref.name == "kt-kubetasks-worker" and spec.queues == ["default"]
    service = by_kind(docs, "Service")["kt-kubetasks-metrics"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "worker"


def test_existing_secret_and_options() -> None:
    docs = render("--set", "database.existingSecret=pg", "--set", "database.existingSecretKey=dsn",
                  "--set", "workerPool.enabled=false", "--set", "worker.replicas=3",
                  "--set", "operator.watchNamespaces={a,b}")
    assert "Secret" not in {d["kind"] for d in docs} and "WorkerPool" not in {d["kind"] for d in docs}
    deployments = by_kind(docs, "Deployment")
    assert deployments["kt-kubetasks-worker"]["spec"]["replicas"] == 3
    container = deployments["kt-kubetasks-operator"]["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=a" in container["command"] and "--all-namespaces" not in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETASKS_DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "dsn"}


def test_refuses_to_render_without_a_database() -> None:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found: the missing-database failure was not checked")
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--kube-version", KUBE_VERSION],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "database.url or database.existingSecret" in proc.stderr


NOTIFY_VALUES = ("--set", f"database.url={DSN}", "--set", "notifications.smtp.host=smtp.example.com",
                 "--set", "notifications.smtp.port=465", "--set", "notifications.smtp.security=tls",
                 "--set", "notifications.smtp.from=kubetasks@example.com",
                 "--set", "notifications.smtp.existingSecret=smtp-login",
                 "--set", "notifications.webhookSecrets.existingSecret=hooks",
                 "--set", "notifications.dashboardUrl=https://kt.example.com",
                 "--set", "notifications.source=/clusters/prod")


def worker_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(docs, "Deployment")["kt-kubetasks-worker"]["spec"]["template"]["spec"]
    return pod


def test_notification_values_become_the_workers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = worker_pod(render(*NOTIFY_VALUES))
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"] if e["name"].startswith("KUBETASKS_NOTIFICATIONS__")}
    assert env.pop("KUBETASKS_NOTIFICATIONS__SMTP_USERNAME")["valueFrom"] == {
        "secretKeyRef": {"name": "smtp-login", "key": "username"}}
    plain = {name: e["value"] for name, e in env.items()}
    assert plain == {"KUBETASKS_NOTIFICATIONS__ENABLED": "true",
                     "KUBETASKS_NOTIFICATIONS__SMTP_HOST": "smtp.example.com",
                     "KUBETASKS_NOTIFICATIONS__SMTP_PORT": "465", "KUBETASKS_NOTIFICATIONS__SMTP_SECURITY": "tls",
                     "KUBETASKS_NOTIFICATIONS__SMTP_FROM": "kubetasks@example.com",
                     "KUBETASKS_NOTIFICATIONS__SMTP_PASSWORD_FILE": "/etc/kubetasks/smtp/password",
                     "KUBETASKS_NOTIFICATIONS__SECRETS_DIR": "/etc/kubetasks/webhook-secrets",
                     "KUBETASKS_NOTIFICATIONS__DASHBOARD_URL": "https://kt.example.com",
                     "KUBETASKS_NOTIFICATIONS__SOURCE": "/clusters/prod"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["smtp-credentials"] == {"name": "smtp-credentials", "mountPath": "/etc/kubetasks/smtp",
                                          "readOnly": True}
    assert volumes["smtp-credentials"]["secret"] == {"secretName": "smtp-login",
                                                     "items": [{"key": "password", "path": "password"}]}
    assert mounts["webhook-secrets"]["mountPath"] == "/etc/kubetasks/webhook-secrets"
    assert volumes["webhook-secrets"]["secret"] == {"secretName": "hooks"}
    # The worker reads exactly these variables into its settings (nothing misspelt, every value valid).
    for name, value in plain.items():
        monkeypatch.setenv(name, value)
    notifications = Settings().notifications
    assert (notifications.smtp_host, notifications.smtp_port, notifications.smtp_security) == (
        "smtp.example.com", 465, "tls")
    assert notifications.smtp_from == "kubetasks@example.com"
    assert str(notifications.smtp_password_file) == "/etc/kubetasks/smtp/password"
    assert str(notifications.secrets_dir) == "/etc/kubetasks/webhook-secrets"
    assert (notifications.dashboard_url, notifications.source) == ("https://kt.example.com", "/clusters/prod")


def test_notification_defaults_set_only_what_the_chart_decides() -> None:
    pod = worker_pod(render("--set", f"database.url={DSN}"))
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("KUBETASKS_NOTIFICATIONS__")}
    assert env == {"KUBETASKS_NOTIFICATIONS__ENABLED": "true", "KUBETASKS_NOTIFICATIONS__SMTP_PORT": "587",
                   "KUBETASKS_NOTIFICATIONS__SMTP_SECURITY": "starttls"}
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]


@pytest.mark.parametrize(("setting", "words"), [
    ("notifications.smtp.security=ssl", 'notifications.smtp.security: "ssl" is not starttls, tls or none'),
    ("notifications.smtp.port=0", "notifications.smtp.port: 0 is not a port (use 1 to 65535"),
])
def test_bad_notification_values_are_refused_naming_the_field(setting: str, words: str) -> None:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found: the refusal was not checked")
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--kube-version", KUBE_VERSION,
                           "--set", f"database.url={DSN}", "--set", setting],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and words in proc.stderr, proc.stderr


def test_helm_lint_with_notifications() -> None:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found: `helm lint` skipped")
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *NOTIFY_VALUES],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
