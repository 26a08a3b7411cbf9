"""A round's events go out in lanes: a receiver's events share a few kept HTTP connections (reused across
rounds, replaced when the receiver closed one), e-mails share an SMTP session; against real receivers and the
outbox on real PostgreSQL, through `deliver_due` as the delivery service runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from receivers import SmtpServer, WebhookReceiver

from kubetasks.worker import db, notifications
from kubetasks.worker.settings import NotificationSettings


def outbox(conn: db.Conn, rule: dict[str, object], count: int) -> None:
    """`count` pending events for `rule`, as the trigger writes them."""
    conn.execute("INSERT INTO kubetasks.notifications (event_type, task_id, rule_index, rule, payload) "
                 "SELECT 'dev.kubetasks.task.failed', g, 0, %s::jsonb, jsonb_build_object('id', g, 'actor', 't.a', "
                 "'queue', 'default', 'state', 'error', 'reason', 'Failed', 'attempts', 1, 'maxRetries', 0) "
                 "FROM generate_series(1, %s) AS g", (json.dumps(rule), count))


def states(conn: db.Conn) -> dict[str, int]:
    return {row["state"]: row["n"] for row in conn.execute(
        "SELECT state, count(*) AS n FROM kubetasks.notifications GROUP BY state")}


@pytest.fixture
def keep_alive() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(keep_alive=True)
    yield server
    server.close()


def test_a_receivers_events_share_kept_connections_across_rounds(conn: db.Conn, keep_alive: WebhookReceiver) -> None:
    settings = NotificationSettings(concurrency=4, batch=50)
    connections = notifications.Connections(settings)
    outbox(conn, {"events": ["failed"], "webhook": {"url": keep_alive.url}}, 40)
    assert notifications.deliver_due(conn, settings, connections).delivered == 40
    first = {r.client_port for r in keep_alive.requests}
    outbox(conn, {"events": ["failed"], "webhook": {"url": keep_alive.url}}, 20)
    assert notifications.deliver_due(conn, settings, connections).delivered == 20
    connections.close()
    assert len(keep_alive.requests) == 60
    assert 1 <= len(first) <= 4  # at most `concurrency` connections for the round's 40 events
    assert {r.client_port for r in keep_alive.requests} == first  # the next round reused them
    assert states(conn) == {"delivered": 60}


def test_a_kept_connection_the_receiver_closed_is_replaced_without_a_failure(conn: db.Conn) -> None:
    receiver = WebhookReceiver(keep_alive=True, drop_kept=True)
    try:
        settings = NotificationSettings(concurrency=1)
        connections = notifications.Connections(settings)
        for _ in range(3):
            outbox(conn, {"events": ["failed"], "webhook": {"url": receiver.url}}, 1)
            done = notifications.deliver_due(conn, settings, connections)
            assert (done.delivered, done.failed) == (1, 0)
        connections.close()
        assert len(receiver.requests) == 3  # each sent once: the closed connection took no request
        assert len({r.client_port for r in receiver.requests}) == 3
    finally:
        receiver.close()


def test_a_rounds_emails_share_smtp_sessions(conn: db.Conn, smtp: SmtpServer) -> None:
    settings = NotificationSettings(concurrency=2, smtp_host="127.0.0.1", smtp_port=smtp.port,
                                    smtp_security="none", smtp_from="kubetasks@example.com")
    outbox(conn, {"events": ["failed"], "email": {"to": ["ops@example.com"]}}, 6)
    assert notifications.deliver_due(conn, settings).delivered == 6
    assert len(smtp.mailbox.messages) == 6
    assert len(set(smtp.mailbox.peers)) == 2  # two lanes, one session each, not one per e-mail


def test_lanes_split_concurrency_between_receivers_in_proportion() -> None:
    def event(url: str | None) -> dict[str, object]:
        return {"rule": {"webhook": {"url": url}} if url else {"email": {"to": ["a@b.io"]}}}

    events = ([event("http://a.example/x")] * 10 + [event("https://b.example/y")] * 30
              + [event("https://b.example:443/z")] * 2 + [event(None)] * 4)
    found = notifications.lanes(events, 8)
    sizes = sorted((notifications.receiver(lane[0]["rule"]["webhook"]["url"])[1] if lane[0]["rule"].get("webhook")
                    else "smtp", len(lane)) for lane in found)
    # 46 events, 8 lanes: a 10/46 -> 2 lanes; b (one receiver: port 443 is https' default) 32/46 -> 6; mail 1.
    assert sizes == [("a.example", 5)] * 2 + [("b.example", 5)] * 4 + [("b.example", 6)] * 2 + [("smtp", 4)]
    assert sum(len(lane) for lane in found) == len(events)
