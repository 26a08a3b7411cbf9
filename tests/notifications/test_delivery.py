"""Events reach real receivers: an aiosmtpd server, an HTTP server on 127.0.0.1; through real workers.

The outcome is written by real worker processes (tests/runtime/workers.py); the trigger of migration 0004
writes the outbox row in the outcome's transaction; the workers' notification service delivers it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from receivers import SmtpServer, WebhookReceiver
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, notifications, queue, schedules
from kubetasks.worker.manifests import parse_spec
from kubetasks.worker.settings import NotificationSettings

pytestmark = pytest.mark.slow

Start = Callable[..., WorkerProcess]


def events(conn: db.Conn, task_id: int) -> list[dict[str, object]]:
    return list(conn.execute("SELECT * FROM kubetasks.notifications WHERE task_id = %s ORDER BY id", (task_id,)))


def delivered(conn: db.Conn, task_id: int) -> list[dict[str, object]]:
    return [e for e in events(conn, task_id) if e["state"] == "delivered"]


def test_the_trigger_writes_one_event_per_matching_rule_in_the_outcome_transaction(conn: db.Conn) -> None:
    rules = [{"events": ["failed"], "webhook": {"url": "http://127.0.0.1:9/a"}},
             {"events": ["succeeded"], "webhook": {"url": "http://127.0.0.1:9/b"}},
             {"events": ["failed", "retriesExhausted"], "email": {"to": ["ops@example.com"]}}]
    task = queue.enqueue(conn, "t.any", {}, validate=False, max_retries=0, notify=rules)
    plain = queue.enqueue(conn, "t.any", {}, validate=False)
    with conn.transaction():
        conn.execute("UPDATE kubetasks.tasks SET state = 'running', started_at = now() WHERE id = ANY(%s)",
                     ([task.id, plain.id],))
        assert events(conn, task.id) == []  # starting is no outcome
        conn.execute("UPDATE kubetasks.tasks SET state = 'error', reason = 'Failed', error = 'boom', "
                     "attempts = 1, finished_at = now() WHERE id = ANY(%s)", ([task.id, plain.id],))
        found = events(conn, task.id)
    assert [(e["rule_index"], e["event_type"]) for e in found] == [
        (0, "dev.kubetasks.task.failed"), (2, "dev.kubetasks.task.retries_exhausted")]
    assert found[0]["payload"]["error"] == "boom"  # type: ignore[index]
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.notifications").fetchone() == {"n": 2}


def test_a_failure_email_reaches_a_real_smtp_server(conn: db.Conn, start_worker: Start, smtp: SmtpServer) -> None:
    task = queue.enqueue(conn, "t.fail", {}, validate=False, notify=[
        {"events": ["failed"], "email": {"to": ["ops@example.com", "dev@example.com"]}}])
    start_worker(notify={"smtp_host": "127.0.0.1", "smtp_port": str(smtp.port), "smtp_security": "none",
                         "smtp_from": "kubetasks@example.com", "dashboard_url": "https://kt.example.com/"})
    wait_for(lambda: smtp.mailbox.messages, timeout=30, what="the e-mail")
    envelope, message = smtp.mailbox.messages[0]
    event = wait_for(lambda: delivered(conn, task.id), timeout=10, what="the delivery recorded")[0]
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert message["Subject"] == f"[kubetasks] task {task.id} t.fail: failed"
    assert message["Message-ID"] == f"<{event['event_id']}@example.com>"
    text = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "State:     error (Failed)" in text
    assert "bad input, do not retry" in text
    assert f"Dashboard: https://kt.example.com/api/v1/tasks/{task.id}" in text
    print("\n--- the e-mail ---\n" + message.as_string())


def test_a_signed_cloudevent_reaches_a_webhook(conn: db.Conn, start_worker: Start, receiver: WebhookReceiver) -> None:
    task = queue.enqueue(conn, "t.warn", {}, validate=False, notify=[
        {"events": ["warning", "succeeded"], "webhook": {"url": receiver.url, "secretKey": "hooks"}}])
    start_worker(notify={"webhook_secrets": '{"hooks": "s3cret"}'})
    wait_for(lambda: receiver.requests, timeout=30, what="the webhook")
    got = receiver.requests[0]
    finished = queue.get_task(conn, task.id).finished_at
    assert finished is not None
    latency = got.at - finished.timestamp()
    expected = "sha256=" + hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Kubetasks-Signature"] == expected
    assert got.headers["Content-Type"].startswith("application/cloudevents+json")
    event = got.json()
    assert {k: event[k] for k in ("specversion", "type", "source", "subject", "datacontenttype")} == {
        "specversion": "1.0", "type": "dev.kubetasks.task.warning", "source": "/kubetasks/tasks",
        "subject": f"task/{task.id}", "datacontenttype": "application/json"}
    recorded = wait_for(lambda: delivered(conn, task.id), timeout=10, what="the delivery recorded")
    assert event["id"] == str(recorded[0]["event_id"])
    assert datetime.fromisoformat(event["time"]).tzinfo is not None
    assert event["data"]["state"] == "warning" and event["data"]["actor"] == "t.warn"
    assert latency < 2.0, f"delivered {latency:.3f}s after the outcome"
    print(f"\nwebhook latency after the outcome commit: {latency * 1000:.0f} ms")


def test_slack_format_and_retries_exhausted(conn: db.Conn, start_worker: Start, receiver: WebhookReceiver,
                                            tmp_path: object) -> None:
    task = queue.enqueue(conn, "t.flaky", {"path": f"{tmp_path}/runs", "fail_times": 5}, validate=False,
                         max_retries=1, notify=[{"events": ["retriesExhausted"],
                                                 "webhook": {"url": receiver.url, "format": "slack"}}])
    start_worker()
    wait_for(lambda: receiver.requests, timeout=30, what="the slack message")
    text = receiver.requests[0].json()["text"]
    assert text.startswith(f"[kubetasks] task {task.id} t.flaky: retries exhausted")
    assert "Attempts:  2 of 2" in text


def test_schedule_rules_are_copied_onto_runs_and_count_consecutive_failures(
        conn: db.Conn, settings: object, receiver: WebhookReceiver) -> None:
    spec = parse_spec({"actor": "t.fail", "schedule": "@daily", "notifications": [
        {"events": ["consecutiveFailures"], "consecutiveFailures": 2, "webhook": {"url": receiver.url}}]})
    schedules.apply(conn, "default/nightly", spec, validate_actor=False)
    assert schedules.spec_of(schedules.get(conn, "default/nightly")) == spec
    types = []
    for _ in range(3):
        run = schedules.trigger(conn, "default/nightly")
        conn.execute("UPDATE kubetasks.tasks SET state = 'error', reason = 'Failed', attempts = 1, "
                     "finished_at = now() WHERE id = %s", (run.id,))
        types.append([e["event_type"] for e in events(conn, run.id)])
    assert types == [[], ["dev.kubetasks.schedule.consecutive_failures"], []]


def test_a_receiver_down_for_a_while_gets_the_event_when_it_returns(
        conn: db.Conn, start_worker: Start) -> None:
    from receivers import free_port

    port = free_port()  # nobody listens: connections are refused
    began = time.time()
    task = queue.enqueue(conn, "t.fail", {}, validate=False, notify=[
        {"events": ["failed"], "webhook": {"url": f"http://127.0.0.1:{port}/hook"}}])
    start_worker(notify={"retry_backoff_base": "0.2", "retry_backoff_max": "1"})
    wait_for(lambda: events(conn, task.id) and events(conn, task.id)[0]["attempts"] >= 3, timeout=30,
             what="failed attempts while the receiver is down")
    down_for = 8.0
    time.sleep(down_for)  # the outage itself: nothing to wait for but time
    back = WebhookReceiver(port=port)
    back_at = time.time()
    try:
        wait_for(lambda: back.requests, timeout=10, what="delivery after the receiver returned")
        event = wait_for(lambda: delivered(conn, task.id), timeout=10, what="the delivery recorded")[0]
        assert event["attempts"] >= 8
        assert back.ids() == [str(event["event_id"])]
        print(f"\nreceiver down {back.requests[0].at - began:.1f}s after the enqueue: delivered at attempt "
              f"{event['attempts']}, {back.requests[0].at - back_at:.2f}s after it came back")
    finally:
        back.close()


def test_kill9_mid_delivery_delivers_exactly_once_to_a_deduplicating_receiver(
        conn: db.Conn, start_worker: Start, tmp_path: object) -> None:
    receiver = WebhookReceiver(hang_first=True)  # accepts the first POST and never answers it
    try:
        task = queue.enqueue(conn, "t.fail", {}, validate=False, notify=[
            {"events": ["failed"], "webhook": {"url": receiver.url}}])
        victim = start_worker(notify={"timeout": "60"})
        wait_for(receiver.hanging.is_set, timeout=30, what="the victim to be mid-send")
        # Tasks keep flowing while the receiver hangs: delivery has its own thread and connection.
        started = time.monotonic()
        for _ in range(20):
            queue.enqueue(conn, "t.noop", {}, validate=False)
        wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE actor = 't.noop' "
                                      "AND state = 'successful'").fetchone()["n"] == 20,  # type: ignore[index]
                 timeout=20, what="tasks to run while the receiver hangs")
        flowing = time.monotonic() - started
        victim.kill()
        assert events(conn, task.id)[0]["state"] == "pending"  # the send never committed
        start_worker()
        wait_for(lambda: delivered(conn, task.id), timeout=30, what="redelivery by another worker")
        time.sleep(1.0)  # a second, wrong delivery would come within this (the worker polls every second)
        ids = receiver.ids()
        assert len(ids) == 2 and len(set(ids)) == 1, ids  # sent twice, one event: the receiver dedups by id
        event = delivered(conn, task.id)[0]
        assert str(event["event_id"]) == ids[0] and event["attempts"] == 1
        print(f"\n20 tasks ran in {flowing:.2f}s while the receiver hung; redelivered after kill -9")
    finally:
        receiver.close()


def test_backoff_doubles_up_to_the_maximum() -> None:
    config = NotificationSettings(retry_backoff_base=2, retry_backoff_max=10)  # type: ignore[arg-type]
    assert [notifications.backoff(n, config) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    assert notifications.sign("k", b"{}") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
