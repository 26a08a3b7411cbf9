"""Fixtures of the notification tests: real receivers, and real worker processes (tests/runtime/workers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from receivers import SmtpServer, WebhookReceiver
from workers import WorkerProcess, fleet


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.close()


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a worker; `notify={"smtp_host": …}` become KUBETASKS_NOTIFICATIONS__* of that process only."""
    with fleet(tmp_path) as started:

        def start(notify: dict[str, str] | None = None, **overrides: object) -> WorkerProcess:
            with monkeypatch.context() as env:
                for key, value in {"poll_interval": "1", **(notify or {})}.items():
                    env.setenv(f"KUBETASKS_NOTIFICATIONS__{key.upper()}", value)
                return started.start(dsn, **overrides)

        yield start
