"""Smoke tests proving the node-less control plane is a real Kubernetes API.

Everything goes through kubectl against the kube-apiserver started by the `controlplane`
fixture: discovery, CRD registration and OpenAPI validation, status and scale subresources.
"""

from __future__ import annotations

import json
import uuid

import pytest
from controlplane import ControlPlane, Kubectl

pytestmark = pytest.mark.apiserver

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kubetasks.dev
spec:
  group: smoke.kubetasks.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
                color: {type: string, enum: [red, green, blue]}
            status:
              type: object
              properties:
                phase: {type: string}
"""


def unique(prefix: str) -> str:
    # One apiserver serves the whole session: names must not collide between tests.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def widget(name: str, spec: str) -> str:
    return f"apiVersion: smoke.kubetasks.dev/v1alpha1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n"


@pytest.fixture(scope="module")
def widget_crd(kubectl: Kubectl) -> str:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    # Established means the group/version is served; the wait fails the test on timeout.
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.smoke.kubetasks.dev",
        timeout=90,
    )  # fmt: skip
    return "widgets.smoke.kubetasks.dev"


def test_server_version_and_health(controlplane: ControlPlane, kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]
    assert server["major"] == "1" and int(server["minor"].rstrip("+")) >= 30, server
    assert server["gitVersion"].startswith("v1."), server
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    # The admin identity really is authenticated (client cert, system:masters), not anonymous.
    whoami = json.loads(kubectl("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == "kubetasks-admin"
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    assert controlplane.server.startswith("https://127.0.0.1:")


def test_api_resources(kubectl: Kubectl) -> None:
    names = set(kubectl("api-resources", "-o", "name").stdout.split())
    expected = {
        "namespaces",
        "deployments.apps",
        "leases.coordination.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "events.events.k8s.io",
    }
    assert expected <= names, expected - names


def test_crd_established_and_object_created(kubectl: Kubectl, widget_crd: str) -> None:
    conditions = json.loads(kubectl("get", "crd", widget_crd, "-o", "json").stdout)["status"]["conditions"]
    assert {"type": "Established", "status": "True"}.items() <= next(
        c for c in conditions if c["type"] == "Established"
    ).items()

    name = unique("ok")
    kubectl("create", "-f", "-", input=widget(name, "{size: 3, color: blue}"))
    obj = json.loads(kubectl("get", "widgets.smoke.kubetasks.dev", name, "-o", "json").stdout)
    assert obj["spec"] == {"size": 3, "color": "blue"}
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]

    # The status subresource is separate: a status patch leaves spec alone and vice versa.
    kubectl(
        "patch", "widgets.smoke.kubetasks.dev", name, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready"}}',
    )  # fmt: skip
    obj = json.loads(kubectl("get", "widgets.smoke.kubetasks.dev", name, "-o", "json").stdout)
    assert obj["status"] == {"phase": "Ready"} and obj["spec"]["size"] == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{size: 0}", "should be greater than or equal to 1"),
        ("{size: big}", "must be of type integer"),
        ("{size: 2, color: purple}", "Unsupported value"),
        ("{color: red}", "Required value"),
    ],
)
def test_crd_schema_violation_rejected(kubectl: Kubectl, widget_crd: str, spec: str, message: str) -> None:
    name = unique("bad")
    proc = kubectl("create", "-f", "-", input=widget(name, spec), check=False)
    assert proc.returncode != 0, proc.stdout
    # The server's validation error names the offending field.
    assert "spec." in proc.stderr and message in proc.stderr, proc.stderr
    assert "is invalid" in proc.stderr, proc.stderr
    leftover = kubectl("get", "widgets.smoke.kubetasks.dev", name, "--ignore-not-found", "-o", "name")
    assert leftover.stdout.strip() == ""


def test_crd_schema_error_names_field(kubectl: Kubectl, widget_crd: str) -> None:
    proc = kubectl("create", "-f", "-", input=widget(unique("bad"), "{size: 99}"), check=False)
    assert proc.returncode != 0
    assert "spec.size" in proc.stderr, proc.stderr


def test_deployment_scale_subresource(kubectl: Kubectl) -> None:
    name = unique("scale")
    kubectl("create", "deployment", name, "--image=registry.k8s.io/pause:3.10", "--replicas=1")

    # The operator's path: patch the /scale subresource, not the Deployment spec.
    kubectl("patch", "deployment", name, "--subresource=scale", "--type=merge", "-p", '{"spec": {"replicas": 3}}')
    scale = json.loads(kubectl("get", "--raw", f"/apis/apps/v1/namespaces/default/deployments/{name}/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    assert "app=" + name in scale["status"].get("selector", ""), scale

    kubectl("scale", "deployment", name, "--replicas=0")
    deployment = json.loads(kubectl("get", "deployment", name, "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 0
    # No controller-manager and no nodes: nothing ever reconciles the status.
    assert not deployment.get("status", {}).get("readyReplicas")
    kubectl("delete", "deployment", name, "--wait=false")
