"""Real worker processes for tests: `python -m kubetasks.worker.runner`-style subprocesses
running the actors of `worker_actors.py` against the test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent
WORKER_CMD = [sys.executable, "-c",
              "import sys; from kubetasks.worker import runner, settings;"
              " sys.exit(runner.run(settings.get_settings()))"]


class WorkerProcess:
    """One worker process; `modules` are imported from `paths` (this folder is always on its path)."""

    def __init__(self, dsn: str, log_path: Path, *, modules: Sequence[str] = ("worker_actors",),
                 paths: Sequence[Path] = (), **overrides: object) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*paths, HERE)),
               "KUBETASKS_DATABASE__URL": dsn,
               "KUBETASKS_WORKER__MODULES": json.dumps(list(modules)),
               "KUBETASKS_WORKER__METRICS_PORT": "0",
               "KUBETASKS_WORKER__CONSUMER_LISTEN_TIMEOUT": "1",
               "KUBETASKS_WORKER__RETRY_BACKOFF_BASE": "0.05",
               "KUBETASKS_WORKER__RESCUE_INTERVAL": "1",
               "KUBETASKS_WORKER__SHUTDOWN_TIMEOUT": "2"}
        for key, value in overrides.items():
            env[f"KUBETASKS_WORKER__{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(WORKER_CMD, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Fleet:
    """The worker processes one test started; all are stopped when it ends."""

    def __init__(self, log_dir: Path, **defaults: object) -> None:
        self.log_dir = log_dir
        self.defaults = defaults
        self.started: list[WorkerProcess] = []

    def start(self, dsn: str, **overrides: object) -> WorkerProcess:
        worker = WorkerProcess(dsn, self.log_dir / f"worker{len(self.started)}.log",
                               **{**self.defaults, **overrides})
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop(timeout=10)
            # Captured by pytest and shown only when the test fails: the log a failure report needs.
            tail = worker.output().splitlines()[-60:]
            header = f"--- {worker.log_path.name} (exit {worker.proc.returncode}), last {len(tail)} lines"
            print(header, *tail, sep="\n")


@contextmanager
def fleet(log_dir: Path, **defaults: object) -> Iterator[Fleet]:
    started = Fleet(log_dir, **defaults)
    try:
        yield started
    finally:
        started.stop_all()

