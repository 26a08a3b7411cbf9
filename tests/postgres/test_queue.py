from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from kubetasks.worker import db, queue
from kubetasks.worker.errors import InvalidInput, UnknownActor
from kubetasks.worker.registry import actor


@actor(name="tests.echo")
def echo(**kwargs: object) -> object:
    return kwargs


def test_enqueue_stores_row_and_notifies_on_commit(conn: db.Conn, dsn: str) -> None:
    with db.connect(dsn) as listener:
        listener.execute("LISTEN kubetasks")
        with conn.transaction():
            task = queue.enqueue(conn, "tests.echo", {"x": 1})
            # Not committed yet: nothing delivered.
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.payload for n in notes] == [f"default:{task.id}"]
    stored = queue.get_task(conn, task.id)
    assert (stored.state, stored.actor, stored.args, stored.attempts) == ("queued", "tests.echo", {"x": 1}, 0)


def test_rolled_back_enqueue_leaves_nothing(conn: db.Conn) -> None:
    with pytest.raises(RuntimeError), conn.transaction():
        queue.enqueue(conn, "tests.echo", {})
        raise RuntimeError("abort")
    assert queue.list_tasks(conn) == []


def test_dedup_returns_live_task_then_allows_new_after_finish(conn: db.Conn) -> None:
    first = queue.enqueue(conn, "tests.echo", {"a": 1}, dedup_key="k")
    second = queue.enqueue(conn, "tests.echo", {"a": 2}, dedup_key="k")
    assert (second.id, second.created, first.created) == (first.id, False, True)
    conn.execute("UPDATE kubetasks.tasks SET state='successful', finished_at=now() WHERE id=%s", (first.id,))
    third = queue.enqueue(conn, "tests.echo", {}, dedup_key="k")
    assert third.created and third.id != first.id


def test_dedup_under_concurrent_enqueues_gives_one_row(dsn: str, conn: db.Conn) -> None:
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        with db.connect(dsn) as c:
            barrier.wait()
            ids.append(queue.enqueue(c, "tests.echo", {}, dedup_key="same").id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert len(queue.list_tasks(conn)) == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"args": {"x": "y" * (1024 * 1024)}}, "args"),
    ({"args": {"x": object()}}, "args"),
    ({"args": "not-an-object"}, "args"),
    ({"args": {"nul": "a\x00b"}}, "args"),
    ({"queue": "bad queue; DROP TABLE"}, "queue"),
    ({"time_limit": 0}, "time_limit"),
    ({"max_retries": -1}, "max_retries"),
    ({"eta": datetime(2030, 1, 1)}, "eta"),
])
def test_bad_input_is_refused_naming_the_field(conn: db.Conn, kwargs: dict[str, object], field: str) -> None:
    args = kwargs.pop("args", {})
    with pytest.raises(InvalidInput) as info:
        queue.enqueue(conn, "tests.echo", args, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field and field in str(info.value)
    assert queue.list_tasks(conn) == []


def test_unknown_actor_is_refused(conn: db.Conn) -> None:
    with pytest.raises(UnknownActor, match="actor: unknown actor 'nope'"):
        queue.enqueue(conn, "nope", {})
    assert queue.list_tasks(conn) == []


def test_hostile_strings_are_stored_verbatim(conn: db.Conn) -> None:
    hostile = {"q": "'); DROP TABLE kubetasks.tasks; --", "u": "\u202e\U0001f600" * 1000}
    task = queue.enqueue(conn, "tests.echo", hostile, dedup_key="'; --")
    assert queue.get_task(conn, task.id).args == hostile


def test_enqueue_many_uses_copy_and_one_notification(conn: db.Conn, dsn: str) -> None:
    with db.connect(dsn) as listener:
        listener.execute("LISTEN kubetasks")
        with conn.transaction():
            count = queue.enqueue_many(conn, "tests.echo", ({"i": i} for i in range(500)))
        notes = list(listener.notifies(timeout=1, stop_after=2))
    assert count == 500 and len(notes) == 1
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.tasks").fetchone() == {"n": 500}


def test_enqueue_many_bad_item_stores_nothing(conn: db.Conn) -> None:
    with pytest.raises(InvalidInput, match=r"args\[2\]"), conn.transaction():
        queue.enqueue_many(conn, "tests.echo", [{}, {}, {"x": float("nan")}])
    assert queue.list_tasks(conn) == []


def test_stats_filters_delete_flush(conn: db.Conn) -> None:
    a = queue.enqueue(conn, "tests.echo", {}, queue="q1")
    queue.enqueue(conn, "tests.echo", {}, queue="q2")
    conn.execute("UPDATE kubetasks.tasks SET state='error', finished_at=now() WHERE id=%s", (a.id,))
    counts = {(r["actor"], r["state"]): r["count"] for r in queue.stats(conn)}
    assert counts == {("tests.echo", "error"): 1, ("tests.echo", "queued"): 1}
    assert [t.id for t in queue.list_tasks(conn, queue.TaskFilter(states=["error"]))] == [a.id]
    with pytest.raises(InvalidInput, match="state"):
        queue.list_tasks(conn, queue.TaskFilter(states=["bogus"]))
    with pytest.raises(InvalidInput, match="filters"):
        queue.delete_tasks(conn, queue.TaskFilter())
    assert queue.delete_tasks(conn, queue.TaskFilter(actors=["tests.echo"])) == 1  # only the finished one
    assert queue.flush_queue(conn, "q2") == 1
    assert queue.list_tasks(conn) == []


def test_retry_requeues_finished_task_only(conn: db.Conn) -> None:
    task = queue.enqueue(conn, "tests.echo", {})
    with pytest.raises(InvalidInput, match="only finished tasks"):
        queue.retry_task(conn, task.id)
    conn.execute("UPDATE kubetasks.tasks SET state='error', attempts=4, error='x', finished_at=now() WHERE id=%s",
                 (task.id,))
    again = queue.retry_task(conn, task.id)
    assert (again.state, again.attempts, again.error) == ("queued", 0, None)


def test_purge_deletes_old_finished_in_batches(conn: db.Conn) -> None:
    queue.enqueue_many(conn, "tests.echo", [{}] * 250)
    keep = queue.enqueue(conn, "tests.echo", {})
    conn.execute("UPDATE kubetasks.tasks SET state='successful', finished_at=now() - interval '2 days'"
                 " WHERE id <> %s", (keep.id,))
    assert queue.purge(conn, older_than_seconds=86400, batch=100) == 250
    assert [t.id for t in queue.list_tasks(conn)] == [keep.id]


def test_migrate_twice_concurrently_is_safe(pg_server: object, dsn: str) -> None:
    from kubetasks.worker.pgserver import LocalPostgres
    assert isinstance(pg_server, LocalPostgres)
    fresh = pg_server.create_database(f"mig_{datetime.now(UTC).timestamp():.0f}".replace(".", ""))
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(db.migrate(fresh))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 0, len(db.migrations())]
    with psycopg.connect(fresh) as c:
        assert c.execute("SELECT count(*) FROM kubetasks.schema_migrations").fetchone() == (len(db.migrations()),)


def test_claim_query_uses_partial_index_with_many_finished_rows(conn: db.Conn) -> None:
    conn.execute("INSERT INTO kubetasks.tasks (actor, state, finished_at) "
                 "SELECT 'tests.echo', 'successful', now() FROM generate_series(1, 20000)")
    queue.enqueue(conn, "tests.echo", {})
    conn.execute("ANALYZE kubetasks.tasks")
    plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
        "EXPLAIN SELECT id FROM kubetasks.tasks WHERE worker IS NULL AND state IN ('queued', 'running')"
        " AND queue = 'default' AND eta <= now() ORDER BY priority DESC, id LIMIT 10"))
    assert "tasks_claimable" in plan, plan
    _ = timedelta
