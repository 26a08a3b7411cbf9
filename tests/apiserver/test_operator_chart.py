"""The rendered Helm chart is accepted by a real kube-apiserver (server-side dry run: every object is
defaulted, validated against its schema and admitted, nothing is stored except the CRDs it needs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from controlplane import Kubectl

pytestmark = pytest.mark.apiserver

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetasks"


def _helm() -> str | None:
    cached = (Path(os.environ.get("KUBETASKS_CACHE") or Path.home() / ".cache" / "kubetasks") / "helm"
              / f"v{os.environ.get('KUBETASKS_HELM_VERSION', '3.22.0')}" / "helm")
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(cached)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.parametrize("options", [
    ["--set", "database.url=postgresql://u:p@db/kubetasks", "--set", "modules={app.tasks}"],
    ["--set", "database.existingSecret=pg", "--set", "workerPool.minReplicas=0",
     "--set", "operator.watchNamespaces={a,b}"],
], ids=["defaults", "existing-secret"])
def test_rendered_chart_passes_server_side_validation(kubectl: Kubectl, tmp_path: Path, options: list[str]) -> None:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not found (run charts/helm.sh): the chart was not rendered for the apiserver")
    namespace = f"chart-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    # The CRDs must exist for the WorkerPool to be validated: apply them for real (they are the chart's files).
    kubectl("apply", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/workerpools.kubetasks.dev", timeout=90)
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--namespace", namespace, "--kube-version", "1.37.0",
                           *options], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(proc.stdout)
    created = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(rendered)).stdout
    for kind in ("deployment.apps/kt-kubetasks-operator", "deployment.apps/kt-kubetasks-worker",
                 "clusterrole.rbac.authorization.k8s.io/kt-kubetasks-operator", "serviceaccount/kt-kubetasks-worker"):
        assert f"{kind} created (server dry run)" in created, created
    assert ("workerpool.kubetasks.dev/kt-kubetasks-worker created" in created) == ("workerPool.enabled=false"
                                                                                  not in options)
