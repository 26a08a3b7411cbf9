"""Smoke test for the end-to-end cluster: it has nodes that become Ready (unlike envtest)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

pytestmark = [pytest.mark.kind, pytest.mark.slow]


def test_nodes_ready(e2e_kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    # A fresh kind node is NotReady until its CNI is up: wait instead of asserting at once.
    e2e_kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s", timeout=200)
    nodes = json.loads(e2e_kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert nodes, "cluster has no nodes"
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    assert ready == [n["metadata"]["name"] for n in nodes], nodes
