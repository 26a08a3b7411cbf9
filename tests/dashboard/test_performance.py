"""With a million tasks (KUBETASKS_DASHBOARD_PERF_ROWS to change it) made by generate_series in a test database:
the default list, a filtered list and a task's detail answer in under 50 ms of server time (median), and the
overview reads no whole table (no sequential scan of kubetasks.tasks, a small share of its rows).
The same code as bench/dashboard_latency.py, which prints the full table of figures."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from kubetasks.worker import db, pgserver

pytestmark = pytest.mark.slow
ROWS = int(os.environ.get("KUBETASKS_DASHBOARD_PERF_ROWS", "1000000"))
BENCH = Path(__file__).resolve().parents[2] / "bench" / "dashboard_latency.py"


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("dashboard_latency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_a_million_tasks(pg_server: pgserver.LocalPostgres) -> None:
    bench = _bench()
    dsn = pg_server.create_database(f"perf{os.getpid()}", template="kubetasks_template")
    began = time.monotonic()
    with db.connect(dsn) as conn:
        bench.fill(conn, ROWS)  # type: ignore[attr-defined]
    assert time.monotonic() - began < 240, "filling took too long"
    results = bench.measure(dsn, 15)  # type: ignore[attr-defined]
    print("\n" + bench.report(results, ROWS, None))  # type: ignore[attr-defined]
    routes = results["routes"]
    for name in ("default list (standalone, exclude successful)", "filtered list (state=error, actor)",
                 "filtered list (actor)", "filtered list (schedule)", "task detail with attempts"):
        assert routes[name]["median_ms"] < 50, (name, routes[name])
    for name, figures in results["sql"].items():
        if name.startswith("overview"):
            assert "tasks" not in figures["seq_scans"], (name, figures)
            assert figures["rows_read"] < ROWS * 0.05, (name, figures)
    assert routes["overview (cached, within 5 s)"]["median_ms"] < 50
