"""Importing the Kopf handlers reads no settings: they are built in the startup handler and travel in the
Runtime, so a bad value fails the operator's start-up with the setting's name, never the import; the
Schedule sync is a daemon that takes its interval from the Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest


def test_importing_the_handlers_reads_no_settings() -> None:
    env = {**os.environ, "KUBETASKS_OPERATOR__SCHEDULE_SYNC_INTERVAL": "not a duration",
           "KUBETASKS_OPERATOR__POOL_SIZE": "-1"}
    code = ("import sys; import kubetasks.operator.handlers as h; "
            "sys.exit(0 if 'kubetasks.worker.settings' in sys.modules and h.FINALIZER else 1)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_schedule_sync_repeats_at_the_runtimes_interval_and_survives_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetasks.operator import config, handlers

    calls: list[tuple[str, str]] = []
    done = threading.Event()

    def sync(rt: object, namespace: str, name: str) -> None:
        calls.append((namespace, name))
        if len(calls) == 1:
            raise RuntimeError("the first pass fails")
        if len(calls) == 3:
            done.set()

    monkeypatch.setattr(handlers.schedules, "sync", sync)
    rt = SimpleNamespace(operator=config.OperatorSettings(schedule_sync_interval=timedelta(milliseconds=10)))

    async def run() -> None:
        task = asyncio.create_task(handlers.schedule_sync(namespace="ns", name="nightly", memo={"runtime": rt},
                                                          logger=logging.getLogger("test")))
        try:
            await asyncio.wait_for(asyncio.to_thread(done.wait, 10), timeout=15)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert calls[:3] == [("ns", "nightly")] * 3
