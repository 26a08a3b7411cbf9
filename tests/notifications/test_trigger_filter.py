"""The outbox trigger runs only for an outcome a task's rules may announce (migration 0009's WHEN clause): the
claim, retries and outcomes no rule names call no PL/pgSQL, which is what keeps notifications cheap for the many
tasks whose only rule is on failure. Counted with PostgreSQL's own function statistics, on real PostgreSQL."""

from __future__ import annotations

import pytest

from kubetasks.worker import db, queue

FAILED = [{"events": ["failed"], "webhook": {"url": "http://127.0.0.1:9/hook"}}]


def calls(conn: db.Conn) -> int:
    """Calls of the trigger function in the current transaction."""
    row = conn.execute("SELECT pg_stat_get_xact_function_calls('kubetasks.notification_enqueue'::regproc) AS n"
                       ).fetchone()
    return int(row["n"] or 0) if row else 0


def outcome(conn: db.Conn, task_id: int, state: str, **extra: object) -> None:
    conn.execute("UPDATE kubetasks.tasks SET state = %s, finished_at = CASE WHEN %s IN ('queued', 'running') "
                 "THEN NULL ELSE now() END, attempts = %s WHERE id = %s",
                 (state, state, extra.get("attempts", 1), task_id))


@pytest.mark.parametrize(("rules", "schedule", "states", "expected_calls", "events"), [
    (FAILED, None, ["running", "successful"], 0, 0),           # the usual case: claimed, succeeded
    (FAILED, None, ["running", "running", "error"], 1, 1),     # a retry calls nothing; the failure does
    (FAILED, None, ["running", "cancelled"], 0, 0),
    ([{"events": ["retriesExhausted"], "email": {"to": ["a@b.io"]}}], None, ["running", "error"], 1, 1),
    ([{"events": ["succeeded", "cancelled"], "email": {"to": ["a@b.io"]}}], None, ["running", "cancelled"], 1, 1),
    (FAILED, "nightly", ["running", "successful"], 1, 0),      # a Schedule's run: its failure streak is kept
    (None, None, ["running", "error"], 0, 0),
], ids=["success", "retry-then-failure", "cancel", "retries-exhausted", "cancel-named", "schedule", "no-rules"])
def test_the_trigger_runs_only_for_outcomes_a_rule_names(conn: db.Conn, rules: list[dict[str, object]] | None,
                                                         schedule: str | None, states: list[str],
                                                         expected_calls: int, events: int) -> None:
    task = queue.enqueue(conn, "t.any", {}, validate=False, max_retries=0, notify=rules, schedule_name=schedule)
    conn.execute("SET track_functions = 'pl'")
    with conn.transaction():
        for state in states:
            outcome(conn, task.id, state)
        assert calls(conn) == expected_calls
        written = conn.execute("SELECT count(*) AS n FROM kubetasks.notifications").fetchone()
    assert written == {"n": events}
