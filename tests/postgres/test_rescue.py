"""The rescuer takes back attempts whose worker is gone, and only those: a worker session's attempts are alive
while the connection holding the session's lock lives; attempts claimed by workers before schema 6 (no session,
one lock per attempt) are judged by that lock, and such a worker's own rescuer cannot take a live session's task
(its statement fails while any of its suspects belongs to a live session)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from waiting import wait_for

from kubetasks.worker import db, housekeeping, protocol, queries, queue
from kubetasks.worker.registry import actor
from kubetasks.worker.settings import Settings

# The rescue statement of workers before schema 6, as they still run it during a rolling upgrade.
PRE_SESSION_RESCUE = f"""
WITH suspects AS MATERIALIZED (
    SELECT t.id FROM kubetasks.tasks t
    WHERE t.worker IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = {protocol.ATTEMPT_LOCK}
          AND l.objsubid = 2 AND l.objid::bigint = (t.id & 2147483647))
    ORDER BY t.id FOR UPDATE SKIP LOCKED
), lost AS MATERIALIZED (
    SELECT id FROM suspects WHERE pg_try_advisory_xact_lock({protocol.ATTEMPT_LOCK}, (id & 2147483647)::int)
)
UPDATE kubetasks.tasks t SET worker = NULL, reason = 'WorkerLost', eta = now()
FROM lost WHERE t.id = lost.id RETURNING t.id
"""
# And its claim: a per-attempt lock, no session.
PRE_SESSION_CLAIM = f"""
WITH candidates AS MATERIALIZED (
    SELECT id FROM kubetasks.tasks WHERE worker IS NULL AND state IN ('queued', 'running') AND eta <= now()
    ORDER BY id FOR UPDATE SKIP LOCKED
), locked AS MATERIALIZED (
    SELECT id FROM candidates WHERE pg_try_advisory_lock({protocol.ATTEMPT_LOCK}, (id & 2147483647)::int)
)
UPDATE kubetasks.tasks t SET state = 'running', worker = 'old/1', attempts = t.attempts + 1,
    attempt_started_at = now()
FROM locked WHERE t.id = locked.id RETURNING t.id
"""


@actor(name="tests.rescued")
def rescued() -> None:
    pass


@pytest.fixture
def worker_conn(dsn: str) -> Iterator[db.Conn]:
    with db.connect(dsn) as c:
        yield c


def start_session(conn: db.Conn) -> int:
    row = conn.execute(queries.get("worker_session_start")).fetchone()
    assert row is not None
    return int(row["session"])


def claim(conn: db.Conn, session: int, worker: str = "new/1") -> list[int]:
    rows = conn.execute(queries.get("task_claim"),
                        {"queue": "default", "limit": 100, "worker": worker, "session": session})
    return [row["id"] for row in rows]


def close_and_wait(worker_conn: db.Conn, conn: db.Conn) -> None:
    """Close a worker's connection; its server process lets go of its locks a moment later."""
    pid = worker_conn.info.backend_pid
    worker_conn.close()
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM pg_locks WHERE pid = %s", (pid,)).fetchone() == {
        "n": 0}, what="the closed connection's locks released")


def state(conn: db.Conn, task_id: int) -> tuple[str, str, str | None]:
    task = queue.get_task(conn, task_id)
    return task.state, task.reason, task.worker


def test_a_sessions_attempts_live_as_long_as_its_connection(conn: db.Conn, worker_conn: db.Conn,
                                                             settings: Settings) -> None:
    tasks = [queue.enqueue(conn, "tests.rescued", {}).id for _ in range(3)]
    session = start_session(worker_conn)
    assert sorted(claim(worker_conn, session)) == tasks
    assert housekeeping.rescue(conn, settings) == []
    assert {state(conn, t) for t in tasks} == {("running", "Running", "new/1")}

    close_and_wait(worker_conn, conn)  # the process dies: its session lock goes with the connection
    rescued = housekeeping.rescue(conn, settings)
    assert sorted(int(str(row["id"])) for row in rescued) == tasks
    assert {state(conn, t) for t in tasks} == {("running", "WorkerLost", None)}
    assert [a["reason"] for a in queue.attempts(conn, tasks[0])] == ["WorkerLost"]


LATE_OUTCOMES = {  # the two ways a worker writes an outcome: with its details, or by ids alone
    "task_finish_many": {"states": ["successful"], "reasons": ["Succeeded"], "results": [None], "errors": [None],
                         "etas": [None]},
    "task_finish_plain": {"state": "successful", "reason": "Succeeded"}}


@pytest.mark.parametrize("statement", sorted(LATE_OUTCOMES))
def test_a_resumed_session_keeps_its_attempts_and_a_rescued_one_cannot_finish_them(
        dsn: str, conn: db.Conn, worker_conn: db.Conn, settings: Settings, statement: str) -> None:
    task = queue.enqueue(conn, "tests.rescued", {}).id
    session = start_session(worker_conn)
    claim(worker_conn, session)
    close_and_wait(worker_conn, conn)
    with db.connect(dsn) as again:  # reconnected before any rescuer ran: the session is taken back
        assert again.execute(queries.get("worker_session_resume"), {"session": session}).fetchone() == {
            "resumed": True}
        assert housekeeping.rescue(conn, settings) == []
        close_and_wait(again, conn)
    rescued = housekeeping.rescue(conn, settings)  # that connection is gone too
    assert [row["id"] for row in rescued] == [task]
    with db.connect(dsn) as late:
        finished = late.execute(queries.get(statement), {
            "ids": [task], **LATE_OUTCOMES[statement], "worker": "new/1", "session": session})
        assert finished.rowcount == 0  # the outcome of an attempt taken back is not written over the retry
    assert state(conn, task) == ("running", "WorkerLost", None)


def test_an_attempt_of_an_older_worker_is_kept_while_its_own_lock_is_held(
        dsn: str, conn: db.Conn, settings: Settings) -> None:
    task = queue.enqueue(conn, "tests.rescued", {}).id
    with db.connect(dsn) as old_worker:
        assert [row["id"] for row in old_worker.execute(PRE_SESSION_CLAIM)] == [task]
        assert housekeeping.rescue(conn, settings) == []
        close_and_wait(old_worker, conn)
    assert [row["id"] for row in housekeeping.rescue(conn, settings)] == [task]


def test_an_older_worker_on_a_row_naming_a_dead_session_keeps_its_attempt(
        dsn: str, conn: db.Conn, worker_conn: db.Conn, settings: Settings) -> None:
    task = queue.enqueue(conn, "tests.rescued", {}).id
    claim(worker_conn, start_session(worker_conn))
    close_and_wait(worker_conn, conn)
    with db.connect(dsn) as old_worker:
        # An older rescuer took it back (leaving the dead session on the row), then an older worker claimed it.
        assert [row["id"] for row in old_worker.execute(PRE_SESSION_RESCUE)] == [task]
        assert [row["id"] for row in old_worker.execute(PRE_SESSION_CLAIM)] == [task]
        assert housekeeping.rescue(conn, settings) == []
        assert state(conn, task) == ("running", "WorkerLost", "old/1")


def test_an_older_workers_rescuer_cannot_take_a_live_sessions_task(
        dsn: str, conn: db.Conn, worker_conn: db.Conn) -> None:
    task = queue.enqueue(conn, "tests.rescued", {}).id
    claim(worker_conn, start_session(worker_conn))
    with db.connect(dsn) as old_worker:
        with pytest.raises(psycopg.errors.RaiseException, match="live worker session"):
            old_worker.execute(PRE_SESSION_RESCUE)  # refused by tasks_rescue_guard, the whole statement undone
        assert state(conn, task) == ("running", "Running", "new/1")
        close_and_wait(worker_conn, conn)
        assert [row["id"] for row in old_worker.execute(PRE_SESSION_RESCUE)] == [task]
