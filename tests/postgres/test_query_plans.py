"""The worker's statements on tasks find their rows by index at every table size, never by a scan of the table."""

from __future__ import annotations

import pytest

from kubetasks.worker import db, queries

SESSION = 1


@pytest.mark.parametrize("rows", [2_000, 20_000, 100_000])
def test_claims_and_outcomes_never_scan_the_whole_table(conn: db.Conn, rows: int) -> None:
    # A join of the claimed ids to the table was hashed over a sequential scan at tens of thousands of rows:
    # a read of every row version for each claim, growing with the history kept.
    conn.execute("INSERT INTO kubetasks.tasks (actor) SELECT 'tests.plan' FROM generate_series(1, %s)", (rows,))
    conn.execute("INSERT INTO kubetasks.queues (name, concurrency_limit) VALUES ('default', 1000)")
    conn.execute("ANALYZE kubetasks.tasks")
    ids = [r["id"] for r in conn.execute("SELECT id FROM kubetasks.tasks ORDER BY id LIMIT 500")]
    statements = {
        "task_claim": {"queue": "default", "limit": 500, "worker": "w/1", "session": SESSION},
        "task_claim_limited": {"queue": "default", "limit": 500, "worker": "w/1", "session": SESSION, "scan": 2000},
        "task_finish_plain": {"ids": ids, "state": "successful", "reason": "Succeeded", "worker": "w/1",
                              "session": SESSION},
        "task_finish_many": {"ids": ids, "states": ["successful"] * 500, "reasons": ["Succeeded"] * 500,
                             "results": [None] * 500, "errors": [None] * 500, "etas": [None] * 500,
                             "worker": "w/1", "session": SESSION},
        "task_rescue": {"limit": 500, "grace": 5.0, "backoff_base": 1.0, "backoff_max": 60.0},
    }
    for name, params in statements.items():
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(b"EXPLAIN " + queries.get(name).encode(), params))
        assert "Seq Scan on tasks" not in plan, f"{name} at {rows} rows:\n{plan}"
