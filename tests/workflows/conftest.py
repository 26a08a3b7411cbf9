"""Real worker processes running the actors of flow_actors.py (and the runtime tests' ones)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import workers

HERE = Path(__file__).parent


class FlowWorker(workers.WorkerProcess):
    """A WorkerProcess whose PYTHONPATH also holds this folder's actors."""

    def __init__(self, dsn: str, log_path: Path, **overrides: object) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(workers.HERE)]),
               "KUBETASKS_DATABASE__URL": dsn,
               "KUBETASKS_WORKER__MODULES": json.dumps(["flow_actors"]),
               "KUBETASKS_WORKER__METRICS_PORT": "0",
               "KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT": "1",
               "KUBETASKS_WORKER__RETRY_BACKOFF_BASE": "0.05",
               "KUBETASKS_WORKER__RESCUE_INTERVAL": "1",
               "KUBETASKS_WORKER__SHUTDOWN_TIMEOUT": "2"}
        for key, value in overrides.items():
            env[f"KUBETASKS_WORKER__{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(workers.WORKER_CMD, env=env, stdout=self._log, stderr=subprocess.STDOUT)


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., FlowWorker]]:
    started: list[FlowWorker] = []

    def start(**overrides: object) -> FlowWorker:
        worker = FlowWorker(dsn, tmp_path / f"worker{len(started)}.log", **overrides)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=10)
