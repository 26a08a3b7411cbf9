"""Tracing is optional: with it off, a worker and an enqueue import nothing of OpenTelemetry; with OpenTelemetry
missing, turning it on is refused naming the setting and the fix. Each case in a fresh interpreter, so what it
imports is what the code imports, on real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Makes `import opentelemetry…` fail in the child, as on an installation without the `tracing` extra.
_WITHOUT_OPENTELEMETRY = """
import importlib.abc, sys
class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, NoOpenTelemetry())
"""


def run(code: str, dsn: str, *, enabled: bool, blocked: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBETASKS_DATABASE__URL": dsn, "KUBETASKS_TRACING__ENABLED": str(enabled).lower()}
    program = (_WITHOUT_OPENTELEMETRY if blocked else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)


ENQUEUE_AND_RUN = """
import sys
from kubetasks.worker import consumer, db, executor, housekeeping, queue, runner, settings
with db.connect(settings.get_settings().database) as conn:
    queue.enqueue(conn, "t.noop", {}, validate=False)
    queue.enqueue_many(conn, "t.noop", [{}, {}], validate=False)
executor.Executor(2, lambda job, outcome: None, backoff_base=1, backoff_max=1, settings=settings.get_settings())
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


@pytest.mark.parametrize("blocked", [False, True], ids=["installed", "not-installed"])
def test_off_imports_nothing_of_opentelemetry(dsn: str, blocked: bool) -> None:
    done = run(ENQUEUE_AND_RUN, dsn, enabled=False, blocked=blocked)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_on_without_opentelemetry_is_refused_naming_the_setting(dsn: str) -> None:
    done = run("""
        from kubetasks.worker import db, queue, settings
        from kubetasks.worker.errors import InvalidInput
        with db.connect(settings.get_settings().database) as conn:
            try:
                queue.enqueue(conn, "t.noop", {}, validate=False)
            except InvalidInput as exc:
                print(exc)
            count = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks").fetchone()["n"]
            print(count)
    """, dsn, enabled=True, blocked=True)
    assert done.returncode == 0, done.stderr
    message, count = done.stdout.strip().splitlines()
    assert message.startswith("tracing.enabled: is true but OpenTelemetry cannot be imported")
    assert "pip install 'kubetasks[tracing]'" in message
    assert count == "0"  # refused before anything was stored
