"""Fixtures of the fault suite, and its report.

Every case records one row (enqueued, succeeded, failed, lost, duplicated, notes) with `fault_report`; the
rows are printed as a table at the end of the run and written as JSON to $KUBETASKS_FAULTS_REPORT, or to
faults-report.json under pytest's basetemp.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import ledger
from workers import WorkerProcess, fleet

from kubetasks.worker import pgserver

ROWS = pytest.StashKey[list[dict[str, Any]]]()
REPORT_PATH = pytest.StashKey[Path]()
OUTCOME = pytest.StashKey[str]()
COLUMNS = ("enqueued", "succeeded", "failed", "lost", "duplicated")


class FaultReport:
    """One row of the report; `record` may be called again to replace the counts."""

    def __init__(self, case: str) -> None:
        self.row: dict[str, Any] = {"case": case, "result": "?", "seconds": 0.0,
                                    **dict.fromkeys(COLUMNS), "notes": ""}
        self.started = time.monotonic()

    def record(self, tally: ledger.Tally | None = None, notes: str = "", **counts: int) -> None:
        if tally is not None:
            self.row.update({k: v for k, v in tally.counts().items() if k in COLUMNS})
            extra: dict[str, object] = {k: v for k, v in tally.counts().items() if k not in COLUMNS and v}
            if tally.duplicated_ids:
                extra["duplicated task ids"] = tally.duplicated_ids[:10]
            notes = "; ".join(filter(None, [", ".join(f"{k}={v}" for k, v in extra.items()), notes]))
        self.row.update(counts)
        self.row["notes"] = notes

    def note(self, text: str) -> None:
        self.row["notes"] = "; ".join(filter(None, [self.row["notes"], text]))


@pytest.fixture(scope="session", autouse=True)
def _report_path(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> None:
    pytestconfig.stash[REPORT_PATH] = Path(os.environ.get("KUBETASKS_FAULTS_REPORT")
                                           or tmp_path_factory.getbasetemp() / "faults-report.json")


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Iterator[FaultReport]:
    report = FaultReport(request.node.name)
    yield report
    report.row["seconds"] = round(time.monotonic() - report.started, 1)
    report.row["result"] = request.node.stash.get(OUTCOME, "?")
    request.config.stash.setdefault(ROWS, []).append(report.row)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash[OUTCOME] = report.outcome
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    headers = ["case", "result", "seconds", *COLUMNS, "notes"]
    cells = [headers, *[["-" if row[h] is None else str(row[h]) for h in headers] for row in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers) - 1)]
    terminalreporter.write_sep("=", "kubetasks fault report")
    for line in cells:
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False))
                                    + "  " + line[-1])
    path = config.stash.get(REPORT_PATH, None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
        terminalreporter.write_line(f"fault report written to {path}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes on any database (`dsn` first); all are stopped at the end of the test."""
    with fleet(tmp_path) as started:
        yield started.start


@pytest.fixture
def new_server() -> Iterator[Callable[..., pgserver.LocalPostgres]]:
    """A PostgreSQL server of the test's own (to stop, restart, or start late); `start=False` only inits it."""
    made: list[pgserver.LocalPostgres] = []

    def make(port: int | None = None, start: bool = True) -> pgserver.LocalPostgres:
        bindir = pgserver.find_bindir()
        assert bindir is not None, "PostgreSQL binaries not found"
        server = pgserver.LocalPostgres(bindir, port=port or pgserver.free_port())
        made.append(server)
        if start:
            server.start()
        else:
            server.init()
        return server

    yield make
    for server in made:
        server.destroy()
