"""Fixture starting real worker processes (see workers.py) against the test database."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import workers


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., workers.WorkerProcess]]:
    with workers.fleet(tmp_path) as started:
        yield functools.partial(started.start, dsn)
