"""The operator's SQL files: every query loads, advisory lock classes come from `protocol`, and the four
queries a TaskRun status is built from select the same columns (a file cannot share a fragment, so the
repetition is checked here instead)."""

from __future__ import annotations

import re
from pathlib import Path

from kubetasks.operator import store
from kubetasks.worker import protocol

VIEWS = ("task_views", "tasks_changed_since", "schedule_tasks_after", "schedule_kept_runs")


def _view_part(sql: str) -> str:
    """From the row's SELECT to the end of the joins every view shares."""
    start = sql.index("SELECT t.id, t.state::text AS state")
    end = sql.index(") a ON true", start) + len(") a ON true")
    return sql[start:end]


def test_the_store_uses_exactly_the_queries_in_the_files() -> None:
    named = set(re.findall(r'query\("([a-z_]+)"\)', Path(store.__file__).read_text()))
    assert named == set(store.all_queries())


def test_the_operator_lock_class_is_filled_in_from_protocol() -> None:
    assert store.query("lock_key") == (
        f"SELECT pg_advisory_xact_lock({protocol.OPERATOR_LOCK}, hashtext(%(key)s))")
    assert not any("{lock:" in sql for sql in store.all_queries().values())


def test_status_views_select_the_same_columns() -> None:
    parts = {name: _view_part(store.query(name)) for name in VIEWS}
    assert len(set(parts.values())) == 1, parts
