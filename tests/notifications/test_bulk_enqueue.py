"""`enqueue_many` honours notification rules as `enqueue` does: the rules given, else the actor's, none for
`notify=[]`; refused naming the field; and a bulk of failing tasks notifies once per task through a real worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from receivers import WebhookReceiver
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue, registry
from kubetasks.worker.errors import InvalidInput

HOOK = {"events": ["failed"], "webhook": {"url": "http://127.0.0.1:9/hook"}}
STORED = [{"events": ["failed"], "webhook": {"url": "http://127.0.0.1:9/hook", "format": "cloudevents"}}]
ACTOR_HOOK = {"events": ["succeeded"], "email": {"to": ["ops@example.com"]}}


@registry.actor(name="t.bulk_notified", notify=[ACTOR_HOOK])
def notified() -> None:
    return None


def stored_rules(conn: db.Conn, actor: str) -> list[Any]:
    return [row["notify"] for row in conn.execute(
        "SELECT notify FROM kubetasks.tasks WHERE actor = %s ORDER BY id", (actor,))]


@pytest.mark.parametrize(("actor", "notify", "expected"), [
    ("t.any", [HOOK], STORED),                                   # the rules given
    ("t.bulk_notified", None, [ACTOR_HOOK]),                     # else the actor's
    ("t.bulk_notified", [HOOK], STORED),                         # given ones replace the actor's
    ("t.bulk_notified", [], None),                               # an empty list: none at all
    ("t.any", None, None),                                       # no rules anywhere
], ids=["given", "actor", "given-over-actor", "empty", "none"])
def test_bulk_enqueue_stores_the_rules_enqueue_would(conn: db.Conn, actor: str, notify: list[Any] | None,
                                                     expected: list[Any] | None) -> None:
    queue.enqueue(conn, actor, {}, validate=False, notify=notify)
    assert queue.enqueue_many(conn, actor, [{}, {}, {}], validate=False, notify=notify) == 3
    assert stored_rules(conn, actor) == [expected] * 4


def test_bad_rules_in_a_bulk_enqueue_are_refused_naming_the_field_and_store_nothing(conn: db.Conn) -> None:
    with pytest.raises(InvalidInput) as caught:
        queue.enqueue_many(conn, "t.any", [{}] * 3, validate=False,
                           notify=[{"events": ["failed"], "webhook": {"url": "mailto:x@y.io"}}])
    assert caught.value.field == "notify[0].webhook.url"
    assert "not an http(s) URL" in caught.value.problem
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.tasks").fetchone() == {"n": 0}


@pytest.mark.slow
def test_each_task_of_a_bulk_enqueue_notifies_on_its_outcome(
        conn: db.Conn, start_worker: Callable[..., WorkerProcess], receiver: WebhookReceiver) -> None:
    queue.enqueue_many(conn, "t.fail", [{}] * 5, validate=False,
                       notify=[{"events": ["failed"], "webhook": {"url": receiver.url}}])
    queue.enqueue_many(conn, "t.noop", [{}] * 5, validate=False,
                       notify=[{"events": ["failed"], "webhook": {"url": receiver.url}}])  # succeed: no event
    start_worker()
    wait_for(lambda: len(receiver.requests) >= 5, timeout=30, what="five webhooks")
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE finished_at IS NOT NULL")
             .fetchone() == {"n": 10}, timeout=30, what="every task finished")
    failed = {row["id"] for row in conn.execute("SELECT id FROM kubetasks.tasks WHERE actor = 't.fail'")}
    sent = [r.json() for r in receiver.requests]
    assert {int(event["data"]["id"]) for event in sent} == failed
    assert {event["type"] for event in sent} == {"dev.kubetasks.task.failed"}
    row = conn.execute("SELECT count(*) AS n FROM kubetasks.notifications").fetchone()
    assert row == {"n": 5}
