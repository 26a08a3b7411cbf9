"""What the dashboard tests share: the token, hostile strings and the seed data."""

from __future__ import annotations

from typing import Any

import worker_actors  # noqa: F401 - declares the t.* actors the task manager lists
from faults.test_bad_input import SQL_HOSTILE

from kubetasks.worker import db, queue, schedules
from kubetasks.worker.manifests import ScheduleSpec

TOKEN = "test-token-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Requested-By": "kubetasks"}
XSS = "<script>alert('x')</script>"


def seed(conn: db.Conn) -> dict[str, Any]:
    """Two namespaces' schedules (one owned by a Schedule resource), runs of each, standalone tasks in every
    state, attempts with logs (one holding a script tag), and an object's task."""
    schedules.apply(conn, "a/nightly", ScheduleSpec(actor="t.noop", schedule="@daily"))
    schedules.apply(conn, "b/hourly", ScheduleSpec(actor="t.noop", schedule="@hourly"), source="operator")
    ids: dict[str, Any] = {}
    ids["a_run"] = schedules.trigger(conn, "a/nightly").id
    ids["b_run"] = schedules.trigger(conn, "b/hourly").id
    ids["queued"] = queue.enqueue(conn, "t.noop", {"q": SQL_HOSTILE}).id
    for state, reason in (("successful", "Succeeded"), ("error", "Failed"), ("warning", "SucceededWithWarnings"),
                          ("cancelled", "Cancelled")):
        task = queue.enqueue(conn, "t.record", {"path": "/dev/null", "value": state})
        conn.execute("UPDATE kubetasks.tasks SET state = %s, reason = %s, attempts = 2, started_at = now() - "
                     "interval '3 seconds', finished_at = now(), error = %s WHERE id = %s",
                     (state, reason, "boom" if state == "error" else None, task.id))
        for attempt in (1, 2):
            conn.execute("INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, started_at, error, "
                         "log) VALUES (%s, %s, %s, %s, now() - interval '2 seconds', %s, %s)",
                         (task.id, attempt, "error" if attempt == 1 else state, "Failed" if attempt == 1 else reason,
                          "first try failed" if attempt == 1 else None, f"log {attempt} {XSS}"))
        ids[state] = task.id
    ids["object"] = queue.enqueue(conn, "t.noop", {}, object_ref="invoice/42").id
    conn.execute("UPDATE kubetasks.tasks SET state = 'error', reason = 'Failed', finished_at = now() WHERE id = %s",
                 (ids["b_run"],))
    return ids
