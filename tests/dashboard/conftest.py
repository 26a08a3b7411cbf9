"""Fixtures of the dashboard tests: the app on a real PostgreSQL database, seeded with tasks and schedules."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetasks.worker import db

pytest.importorskip("fastapi", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

from dashboard.helpers import HEADERS, TOKEN, seed
from fastapi.testclient import TestClient
from workers import WorkerProcess, fleet

from kubetasks.worker.dashboard.app import DashboardConfig, create_app
from kubetasks.worker.dashboard.auth import TokenAuth


@pytest.fixture
def seeded(conn: db.Conn) -> dict[str, Any]:
    return seed(conn)


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    app = create_app(DashboardConfig(dsn, TokenAuth(TOKEN)))
    with TestClient(app, headers=HEADERS) as test_client:
        yield test_client


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Real worker processes running tests/runtime/worker_actors.py (as tests/runtime/conftest.py does)."""
    with fleet(tmp_path) as started:
        yield functools.partial(started.start, dsn)
