"""The scheduleMissed event: one outbox event per tick a schedule skipped under Forbid or lost to downtime
outside what its missed-run policy runs, written in the firing transaction (so once, with two schedulers),
and delivered by a real worker as a CloudEvent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from receivers import WebhookReceiver
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, scheduler, schedules
from kubetasks.worker.manifests import parse_spec
from kubetasks.worker.settings import Settings

T0 = datetime(2030, 1, 7, 10, 0, 30, tzinfo=UTC)
HOOK = "http://127.0.0.1:9/missed"


def make(conn: db.Conn, url: str = HOOK, **overrides: Any) -> None:
    spec = parse_spec({"actor": "t.any", "schedule": "*/10 * * * *", "notifications": [
        {"events": ["scheduleMissed"], "webhook": {"url": url}},
        {"events": ["failed"], "email": {"to": ["ops@example.com"]}}], **overrides})
    schedules.apply(conn, "default/s", spec, now=T0, validate_actor=False)


def at(hour: int, minute: int) -> datetime:
    return datetime(2030, 1, 7, hour, minute, tzinfo=UTC)


def missed(conn: db.Conn) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT payload, rule_index, task_id FROM kubetasks.notifications "
                        "WHERE event_type = 'dev.kubetasks.schedule.missed' ORDER BY id").fetchall()
    assert all(r["rule_index"] == 0 and r["task_id"] is None for r in rows)  # only the rule asking for it
    return [(r["payload"]["tick"], r["payload"]["why"]) for r in rows]


def test_a_tick_skipped_by_forbid_is_one_missed_event(conn: db.Conn, settings: Settings) -> None:
    make(conn, concurrencyPolicy="Forbid")
    assert len(scheduler.fire_due(conn, settings, now=at(10, 10))) == 1
    assert scheduler.fire_due(conn, settings, now=at(10, 20)) == []  # the first run is still queued
    assert missed(conn) == [("2030-01-07T10:20:00Z", "skipped (Forbid): a run is still queued or running")]


def test_ticks_lost_to_downtime_outside_the_catch_up_window_are_missed_once_each_with_two_schedulers(
        dsn: str, conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="CatchUp", catchupWindow="30m")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            with db.connect(dsn) as own:
                barrier.wait()
                scheduler.fire_due(own, settings, now=at(11, 5))  # 10:10 … 11:00 due; the window keeps 10:40 on
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert [tick for tick, _ in missed(conn)] == ["2030-01-07T10:10:00Z", "2030-01-07T10:20:00Z",
                                                   "2030-01-07T10:30:00Z"]
    assert all(why.startswith("lost to downtime: due, 3 tick(s) (CatchUp)") for _, why in missed(conn))


def test_ticks_outside_start_and_end_time_are_not_misses(conn: db.Conn, settings: Settings) -> None:
    make(conn, missedRunPolicy="Skip", startTime="2030-01-07T10:25:00Z", endTime="2030-01-07T10:45:00Z")
    scheduler.fire_due(conn, settings, now=at(12, 0))  # 10:30 and 10:40 lost; nothing before or after exists
    assert [tick for tick, _ in missed(conn)] == ["2030-01-07T10:30:00Z", "2030-01-07T10:40:00Z"]
    assert schedules.get(conn, "default/s")["next_run"] is None


def test_a_schedule_without_the_rule_writes_no_event(conn: db.Conn, settings: Settings) -> None:
    spec = parse_spec({"actor": "t.any", "schedule": "*/10 * * * *", "missedRunPolicy": "Skip"})
    schedules.apply(conn, "default/s", spec, now=T0, validate_actor=False)
    scheduler.fire_due(conn, settings, now=at(12, 0))
    assert missed(conn) == []


def test_a_missed_tick_reaches_a_webhook_as_a_cloudevent(conn: db.Conn, settings: Settings,
                                                         start_worker: Callable[..., WorkerProcess],
                                                         receiver: WebhookReceiver) -> None:
    make(conn, url=receiver.url, missedRunPolicy="Skip")
    scheduler.fire_due(conn, settings, now=at(10, 25))  # 10:10 and 10:20 lost (Skip, beyond its tolerance)
    start_worker()
    wait_for(lambda: len(receiver.requests) == 2, timeout=30, what="two missed-tick events")
    got = sorted((r.json() for r in receiver.requests), key=lambda e: e["data"]["tick"])
    assert [e["type"] for e in got] == ["dev.kubetasks.schedule.missed"] * 2
    assert [e["subject"] for e in got] == ["schedule/default/s/tick/2030-01-07T10:10:00Z",
                                           "schedule/default/s/tick/2030-01-07T10:20:00Z"]
    assert got[0]["data"]["schedule"] == "default/s" and got[0]["data"]["missedRunPolicy"] == "Skip"
    assert got[0]["source"].endswith("/schedules/default/s")


def test_a_missed_tick_e_mail_names_the_schedule_the_tick_and_why(conn: db.Conn, settings: Settings) -> None:
    from kubetasks.worker import notifications

    make(conn, concurrencyPolicy="Forbid", notifications=[
        {"events": ["scheduleMissed"], "email": {"to": ["ops@example.com"]}}])
    scheduler.fire_due(conn, settings, now=at(10, 10))
    scheduler.fire_due(conn, settings, now=at(10, 20))
    event = conn.execute("SELECT * FROM kubetasks.notifications").fetchone()
    assert event is not None
    message = notifications.email_message(event, settings.notifications)
    assert message["Subject"] == "[kubetasks] schedule default/s t.any: missed tick 2030-01-07T10:20:00Z"
    text = message.get_content()
    assert "Tick:      2030-01-07T10:20:00Z" in text and "Why:       skipped (Forbid)" in text
