"""Fixture starting real worker processes (see workers.py) against the test database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workers import WorkerProcess


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: object) -> WorkerProcess:
        worker = WorkerProcess(dsn, tmp_path / f"worker{len(started)}.log", **overrides)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=10)
