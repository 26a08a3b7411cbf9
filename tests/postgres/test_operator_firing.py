"""The operator's scheduler thread: the workers' FiringService on the operator's pool, on time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from waiting import wait_for

from kubetasks.operator import config, firing
from kubetasks.operator.runtime import Runtime
from kubetasks.worker import db, schedules
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings


def test_the_operator_fires_when_the_schedule_is_due_not_an_interval_later(conn: db.Conn,
                                                                            settings: Settings) -> None:
    schedules.apply(conn, "default/soon", ScheduleSpec(actor="t.noop", schedule="* * * * *"),
                    validate_actor=False, now=datetime.now(UTC))
    conn.execute("UPDATE kubetasks.schedules SET next_run = now() + interval '0.5 seconds'")
    operator = config.OperatorSettings(scheduler_interval=timedelta(seconds=60), validate_actors=False)
    rt = Runtime.create(settings, operator, api=object())  # type: ignore[arg-type]  # firing needs no API
    try:
        thread = firing.Firing(rt)
        rt.start_thread(thread)
        wait_for(lambda: thread.fired == 1, timeout=5, what="the operator's run, well before 60 s")
    finally:
        rt.close()
    assert [t.schedule_name for t in schedules.history(conn, "default/soon")] == ["default/soon"]
