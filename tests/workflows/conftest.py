"""Real worker processes running the actors of flow_actors.py (and the runtime tests' ones)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import workers

HERE = Path(__file__).parent


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., workers.WorkerProcess]]:
    """Workers importing this folder's flow_actors (and, from tests/runtime, the runtime tests' helpers)."""
    with workers.fleet(tmp_path, modules=["flow_actors"], paths=[HERE]) as started:
        yield functools.partial(started.start, dsn)
