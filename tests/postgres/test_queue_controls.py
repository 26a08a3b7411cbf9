"""Queue controls on a real server: the store, and task_claim_limited's limits under racing claimers."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from kubetasks.worker import controls, db, metrics, protocol, queries, queue
from kubetasks.worker.errors import InvalidInput
from kubetasks.worker.settings import Settings

SESSION = 1  # the worker session the claims name (no rescuer runs here, so its lock need not be held)


def claim_limited(c: db.Conn, name: str, limit: int, worker: str) -> list[dict[str, Any]]:
    """One limited claim as the consumer makes it: the row lock, then the claim, in one transaction."""
    control = controls.get(c, name)
    params = {"queue": name, "limit": limit, "worker": worker, "session": SESSION,
              "scan": control.claim_scan(limit)}
    with c.transaction():
        c.execute(queries.get("queue_control_lock"), params)
        return c.execute(queries.get("task_claim_limited"), params).fetchall()


def finish(c: db.Conn, ids: list[int], worker: str) -> None:
    c.execute(queries.get("task_finish_many"), {
        "ids": ids, "states": ["successful"] * len(ids), "reasons": ["Succeeded"] * len(ids),
        "results": [None] * len(ids), "errors": [None] * len(ids), "etas": [None] * len(ids), "worker": worker,
        "session": SESSION})


def running(c: db.Conn, name: str) -> int:
    row = c.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE queue = %s AND worker IS NOT NULL",
                    (name,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_queue_without_a_row_is_unpaused_and_unlimited(conn: db.Conn) -> None:
    control = controls.get(conn, "billing")
    assert control == controls.QueueControl("billing") and not control.limited and not control.paused
    assert controls.list_controls(conn) == []


def test_pause_resume_and_limits_are_stored_and_announced(dsn: str, conn: db.Conn) -> None:
    with db.connect(dsn) as listener:
        listener.execute(db.listen(protocol.QUEUE_CONTROL_CHANNEL))
        controls.set_paused(conn, "billing", True)
        limits = dataclasses.replace(controls.get(conn, "billing"), concurrency_limit=3,
                                     concurrency_key="customer_id", key_concurrency_limit=1,
                                     rate_limit=50, rate_period=1.0)
        stored = controls.set_limits(conn, limits)
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert got == ["billing", "billing"]
    assert stored == limits and stored.paused and stored.limited
    assert controls.set_paused(conn, "billing", False) == dataclasses.replace(limits, paused=False)
    assert [c.name for c in controls.list_controls(conn)] == ["billing"]


def test_the_claims_token_updates_announce_nothing(dsn: str, conn: db.Conn) -> None:
    controls.set_limits(conn, controls.QueueControl("q", rate_limit=100, rate_period=0.01))
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(5)), queue="q", validate=False)
    with db.connect(dsn) as listener:
        listener.execute(db.listen(protocol.QUEUE_CONTROL_CHANNEL))
        for _ in range(3):
            claim_limited(conn, "q", 2, "w")
        assert list(listener.notifies(timeout=0.3)) == []


@pytest.mark.parametrize(("change", "field"), [
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"concurrency_key": "customer_id"}, "concurrency_key"),
    ({"rate_limit": 5}, "rate_period"),
    ({"name": "no spaces"}, "queue"),
])
def test_bad_limits_are_refused_naming_the_field(conn: db.Conn, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        controls.set_limits(conn, dataclasses.replace(controls.QueueControl("q"), **change))
    assert err.value.field == field and err.value.fix


@pytest.mark.parametrize(("text", "expected"), [("50/s", (50, 1.0)), ("100/1m", (100, 60.0)),
                                                ("10/30s", (10, 30.0)), ("5/2.5", (5, 2.5)), ("3/h", (3, 3600.0))])
def test_rates_parse(text: str, expected: tuple[int, float]) -> None:
    assert controls.parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "0/s", "5/0s", "5/d", "-1/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="rate"):
        controls.parse_rate(text)


def test_a_paused_queue_claims_nothing_even_through_the_limited_claim(conn: db.Conn) -> None:
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(3)), queue="q", validate=False)
    controls.set_paused(conn, "q", True)
    assert claim_limited(conn, "q", 10, "w") == []
    controls.set_paused(conn, "q", False)
    assert len(claim_limited(conn, "q", 10, "w")) == 3


def test_concurrency_limit_is_exact_under_racing_claimers(dsn: str, conn: db.Conn) -> None:
    """16 connections claim and finish as fast as they can; a sampler never sees more than 3 running."""
    controls.set_limits(conn, controls.QueueControl("q", concurrency_limit=3))
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(600)), queue="q", validate=False)
    stop = threading.Event()
    most: list[int] = []

    def claimer(n: int) -> None:
        with db.connect(dsn) as c:
            while not stop.is_set():
                rows = claim_limited(c, "q", 4, f"w{n}")
                seen = running(c, "q")
                most.append(seen)
                if rows:
                    finish(c, [r["id"] for r in rows], f"w{n}")
                elif seen == 0:
                    return  # drained

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    assert max(most) == 3  # reached, never passed
    assert queue.stats(conn) == [{"actor": "t.noop", "state": "successful", "count": 600}]


def test_per_key_limit_holds_one_per_key_and_skips_keys_that_are_full(conn: db.Conn) -> None:
    controls.set_limits(conn, controls.QueueControl("q", concurrency_key="customer", key_concurrency_limit=1))
    # Ten tasks of customer 1 ahead of one each for customers 2 and 3, and one without the key.
    queue.enqueue_many(conn, "t.noop", [*({"customer": 1} for _ in range(10)), {"customer": 2}, {"customer": 3},
                                        {"other": 1}], queue="q", validate=False)
    first = claim_limited(conn, "q", 10, "w")
    assert sorted(str(r["args"].get("customer")) for r in first) == ["1", "2", "3", "None"]
    assert claim_limited(conn, "q", 10, "w") == []  # every key is at its limit
    finish(conn, [r["id"] for r in first if r["args"].get("customer") == 1], "w")
    again = claim_limited(conn, "q", 10, "w")
    assert [r["args"] for r in again] == [{"customer": 1}]


def test_rate_limit_spends_tokens_that_refill_over_the_period(conn: db.Conn) -> None:
    controls.set_limits(conn, controls.QueueControl("q", rate_limit=5, rate_period=3600.0))
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(20)), queue="q", validate=False)
    assert claim_limited(conn, "q", 10, "w") == []  # a new rate starts with an empty bucket
    # An hour's worth of refill (as if the bucket had waited), capped at the bucket's size of 5.
    conn.execute("UPDATE kubetasks.queues SET rate_refilled_at = now() - interval '2 hours'")
    assert len(claim_limited(conn, "q", 10, "w")) == 5
    assert claim_limited(conn, "q", 10, "w") == []
    conn.execute("UPDATE kubetasks.queues SET rate_refilled_at = rate_refilled_at - interval '1440 seconds'")
    assert len(claim_limited(conn, "q", 10, "w")) == 2  # 1440 s at 5 per hour: 2 tokens


def test_startable_leaves_out_what_the_limits_hold(conn: db.Conn) -> None:
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(7)), queue="free", validate=False)
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(7)), queue="paused", validate=False)
    queue.enqueue_many(conn, "t.noop", ({"k": i % 2} for i in range(10)), queue="limited", validate=False)
    controls.set_paused(conn, "paused", True)
    controls.set_limits(conn, controls.QueueControl("limited", concurrency_limit=5, concurrency_key="k",
                                                    key_concurrency_limit=2))
    claimed = claim_limited(conn, "limited", 1, "w")  # one task of key 0 running
    assert [r["args"] for r in claimed] == [{"k": 0}]
    rows = {r["queue"]: r for r in controls.startable(conn)}
    assert {q: (r["runnable"], r["running"], r["startable"], r["paused"]) for q, r in rows.items()} == {
        "free": (7, 0, 7, False), "paused": (7, 0, 0, True),
        "limited": (9, 1, 3, False)}  # key 0: 1 more, key 1: 2; under the queue's 4 free slots
    assert [r["queue"] for r in controls.startable(conn, ["free"])] == ["free"]


def test_metrics_show_paused_queues_limits_and_held_tasks(conn: db.Conn, settings: Settings) -> None:
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(4)), queue="paused", validate=False)
    queue.enqueue_many(conn, "t.noop", ({} for _ in range(6)), queue="limited", validate=False)
    controls.set_paused(conn, "paused", True)
    controls.set_limits(conn, controls.QueueControl("limited", concurrency_limit=2, rate_limit=30, rate_period=60))
    families = {f.name: f for f in metrics.DatabaseCollector(settings.database, cache_seconds=0)._read()}
    samples = {name: {tuple(s.labels.values()): s.value for s in families[name].samples}
               for name in ("kubetasks_queue_paused", "kubetasks_queue_limit", "kubetasks_queue_held_tasks")}
    assert samples == {
        "kubetasks_queue_paused": {("limited",): 0.0, ("paused",): 1.0},
        "kubetasks_queue_limit": {("limited", "concurrency"): 2, ("limited", "rate_per_second"): 0.5},
        "kubetasks_queue_held_tasks": {("limited",): 4, ("paused",): 4}}
