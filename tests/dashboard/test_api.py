"""The dashboard's JSON API on a real PostgreSQL: every route, bad input refused naming the field, and nothing
stored changes when a request is refused."""

from __future__ import annotations

from typing import Any

import pytest
from dashboard.helpers import TOKEN, XSS
from fastapi.testclient import TestClient
from faults.test_bad_input import SQL_HOSTILE, snapshot

from kubetasks.worker import controls, db, queue, schedules

API = "/api/v1"


def ids_of(page: dict[str, Any]) -> list[int]:
    return [t["id"] for t in page["items"]]


def test_openapi_and_unauthenticated(client: TestClient) -> None:
    doc = client.get(f"{API}/openapi.json").json()
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}/retry", "/api/v1/schedules/{namespace}/{name}/trigger",
            "/api/v1/actors", "/api/v1/overview", "/api/v1/queues", "/api/v1/tasks/bulk"} <= set(doc["paths"])
    bare = TestClient(client.app)
    answer = bare.get(f"{API}/tasks")
    assert answer.status_code == 401 and answer.json()["error"]["field"] == "Authorization"
    assert bare.get(f"{API}/tasks", headers={"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}).status_code == 401
    assert client.get(f"{API}/whoami").json()["mode"] == "token"
    assert client.get(f"{API}/nope").status_code == 404


def test_task_list_filters_and_keyset_pagination(client: TestClient, seeded: dict[str, Any]) -> None:
    everything = client.get(f"{API}/tasks", params={"limit": 100}).json()
    assert len(everything["items"]) == 8 and everything["next"] is None
    assert ids_of(everything) == sorted(ids_of(everything), reverse=True)
    first = client.get(f"{API}/tasks", params={"limit": 3}).json()
    second = client.get(f"{API}/tasks", params={"limit": 3, "before": first["next"]}).json()
    assert ids_of(first) + ids_of(second) == ids_of(everything)[:6]
    assert ids_of(client.get(f"{API}/tasks", params={"state": ["error", "warning"]}).json()) == sorted(
        [seeded["error"], seeded["warning"], seeded["b_run"]], reverse=True)
    assert ids_of(client.get(f"{API}/tasks", params={"actor": "t.record", "exclude_successful": True}).json()) == [
        seeded["cancelled"], seeded["warning"], seeded["error"]]
    assert ids_of(client.get(f"{API}/tasks", params={"schedule": "a/nightly"}).json()) == [seeded["a_run"]]
    assert ids_of(client.get(f"{API}/tasks", params={"object": "invoice/42"}).json()) == [seeded["object"]]
    assert seeded["object"] not in ids_of(client.get(f"{API}/tasks", params={"standalone": True}).json())
    assert ids_of(client.get(f"{API}/tasks", params={"namespace": "b"}).json()) == [seeded["b_run"]]
    assert ids_of(client.get(f"{API}/tasks", params={"queue": "nope"}).json()) == []
    assert ids_of(client.get(f"{API}/tasks", params={"created_before": "2000-01-01T00:00:00Z"}).json()) == []
    assert len(ids_of(client.get(f"{API}/tasks", params={"created_after": "2000-01-01T00:00:00Z"}).json())) == 8
    assert ids_of(client.get(f"{API}/tasks", params={"search": str(seeded["error"])}).json()) == [seeded["error"]]
    assert ids_of(client.get(f"{API}/tasks", params={"search": "invoice"}).json()) == [seeded["object"]]
    row = client.get(f"{API}/tasks", params={"schedule": "b/hourly"}).json()["items"][0]
    assert row["namespace"] == "b" and row["state"] == "error"


def test_task_detail_has_attempts_with_logs_and_durations(client: TestClient, seeded: dict[str, Any]) -> None:
    detail = client.get(f"{API}/tasks/{seeded['error']}").json()
    assert detail["state"] == "error" and detail["duration"] is not None
    assert [a["attempt"] for a in detail["attempt_log"]] == [1, 2]
    assert [a["current"] for a in detail["attempt_log"]] == [False, True]
    assert detail["attempt_log"][0]["error"] == "first try failed"
    assert detail["attempt_log"][1]["log"] == f"log 2 {XSS}"  # stored as is; the UI escapes it
    assert detail["attempt_log"][1]["duration"] >= 1
    assert client.get(f"{API}/tasks/999999").status_code == 404


def test_retry_cancel_delete(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    answer = client.post(f"{API}/tasks/{seeded['error']}/retry")
    assert answer.status_code == 200 and answer.json()["state"] == "queued"
    assert client.post(f"{API}/tasks/{seeded['error']}/retry").status_code == 409  # live now
    assert client.post(f"{API}/tasks/{seeded['queued']}/cancel", json={"message": "no"}).json()["state"] == \
        "cancelled"
    assert client.post(f"{API}/tasks/{seeded['queued']}/cancel").status_code == 409
    assert client.delete(f"{API}/tasks/{seeded['a_run']}").status_code == 409  # still queued
    assert client.delete(f"{API}/tasks/{seeded['successful']}").json() == {"deleted": seeded["successful"]}
    assert client.get(f"{API}/tasks/{seeded['successful']}").status_code == 404


def test_bulk_dry_run_counts_and_changes_nothing(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    before = snapshot(conn)
    counted = client.post(f"{API}/tasks/bulk", json={"action": "delete", "filter": {"actor": ["t.record"]}}).json()
    assert counted == {"action": "delete", "dry_run": True, "count": 4, "filter": {"actor": ["t.record"]}}
    retry = client.post(f"{API}/tasks/bulk", json={"action": "retry", "filter": {"state": ["error"]}}).json()
    assert retry["count"] == 2
    flush = client.post(f"{API}/tasks/bulk", json={"action": "flush", "queue": "default"}).json()
    assert flush["count"] == 3  # a schedule run, the queued task, the object's task
    assert snapshot(conn) == before
    done = client.post(f"{API}/tasks/bulk", json={"action": "retry", "filter": {"state": ["error"]},
                                                  "dry_run": False}).json()
    assert done["count"] == 2 and queue.get_task(conn, seeded["error"]).state == "queued"
    deleted = client.post(f"{API}/tasks/bulk", json={"action": "delete", "filter": {"state": ["warning"]},
                                                     "dry_run": False}).json()
    assert deleted["count"] == 1
    flushed = client.post(f"{API}/tasks/bulk", json={"action": "flush", "queue": "default", "dry_run": False})
    assert flushed.json()["count"] == 5


def test_schedules_trigger_pause_resume_edit(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    items = client.get(f"{API}/schedules").json()["items"]
    assert [(s["name"], s["owned_by_resource"]) for s in items] == [("a/nightly", False), ("b/hourly", True)]
    assert items[0]["next_run"] and items[0]["last_run"]
    detail = client.get(f"{API}/schedules/a/nightly").json()
    assert [r["id"] for r in detail["recent_runs"]] == [seeded["a_run"]]
    triggered = client.post(f"{API}/schedules/a/nightly/trigger").json()
    assert triggered["created"] and triggered["task"]["schedule_name"] == "a/nightly"
    assert client.post(f"{API}/schedules/b/hourly/trigger").status_code == 200  # as the annotation does
    assert client.post(f"{API}/schedules/a/nightly/pause").json()["paused"] is True
    resumed = client.post(f"{API}/schedules/a/nightly/resume").json()
    assert resumed["paused"] is False and resumed["task_id"]
    assert client.post(f"{API}/schedules/a/nightly/resume").status_code == 409  # not paused
    edited = client.patch(f"{API}/schedules/a/nightly", json={"cron": "*/5 * * * *", "time_zone": "Europe/Berlin"})
    assert edited.status_code == 200 and edited.json()["cron"] == "*/5 * * * *"
    assert schedules.get(conn, "a/nightly")["time_zone"] == "Europe/Berlin"
    before = snapshot(conn)
    for method, path in (("post", "pause"), ("post", "resume")):
        owned = getattr(client, method)(f"{API}/schedules/b/hourly/{path}")
        assert owned.status_code == 409 and "kubectl -n b edit" in owned.json()["error"]["fix"]
    assert client.patch(f"{API}/schedules/b/hourly", json={"cron": "@daily"}).status_code == 409
    assert client.get(f"{API}/schedules/a/missing").status_code == 404
    assert snapshot(conn) == before


def test_counts_queues_actors_and_task_manager(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    overview = client.get(f"{API}/overview").json()
    assert {(r["actor"], r["state"]): r["count"] for r in overview["live"]}[("t.noop", "queued")] == 3
    assert sum(r["count"] for r in overview["last_hour"]) == 5
    assert sum(p["ok"] + p["failed"] for p in overview["throughput"]) == 5
    assert overview["queues"][0]["queue"] == "default"
    assert client.get(f"{API}/queues").json()["items"][0]["runnable"] == 3
    actors = {a["name"]: a for a in client.get(f"{API}/actors").json()["items"]}
    schema = actors["t.record"]["args_schema"]
    assert schema["required"] == ["path", "value"] and schema["properties"]["value"]["type"] == "string"
    assert actors["t.flaky"]["args_schema"]["properties"]["fail_times"]["type"] == "integer"
    assert client.get(f"{API}/actors/t.noop").json()["args_schema"]["additionalProperties"] is True
    created = client.post(f"{API}/tasks", json={"actor": "t.flaky", "args": {"path": "/tmp/x", "fail_times": "2"},
                                                "description": "from the form"})
    assert created.status_code == 201
    task = created.json()
    assert task["args"] == {"path": "/tmp/x", "fail_times": 2} and task["description"] == "from the form"
    later = client.post(f"{API}/tasks", json={"actor": "t.noop", "eta": "2099-01-01T00:00:00Z"}).json()
    assert later["eta"].startswith("2099-01-01")
    made = client.post(f"{API}/schedules", json={"name": "ops/cleanup", "actor": "t.noop", "cron": "@hourly"})
    assert made.status_code == 201 and made.json()["source"] == "dashboard"
    assert client.get(f"{API}/namespaces").json() == {"items": ["a", "b", "ops"], "standalone": True}


def test_queues_show_controls_and_pause_resume(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    controls.set_limits(conn, controls.QueueControl("billing", concurrency_limit=2, rate_limit=50, rate_period=1))
    items = {q["queue"]: q for q in client.get(f"{API}/queues").json()["items"]}
    assert items["billing"] == {"queue": "billing", "runnable": 0, "delayed": 0, "executing": 0, "held": 0,
                                "paused": False, "concurrency_limit": 2, "concurrency_key": None,
                                "key_concurrency_limit": None, "rate_limit": 50, "rate_period": 1.0,
                                "limited": True}
    assert (items["default"]["paused"], items["default"]["limited"], items["default"]["held"]) == (False, False, 0)
    client.get(f"{API}/overview")  # cached from here on
    paused = client.post(f"{API}/queues/default/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert controls.get(conn, "default").paused
    default = next(q for q in client.get(f"{API}/overview").json()["queues"] if q["queue"] == "default")
    assert default["paused"] is True and default["held"] == default["runnable"] == 3  # not the cached copy
    assert client.post(f"{API}/queues/default/resume").json()["paused"] is False
    assert not controls.get(conn, "default").paused


BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("post", "/queues/no%20spaces/pause", {}, "queue"),
    ("get", "/tasks?state=finished", {}, "state"),
    ("get", "/tasks?limit=0", {}, "limit"),
    ("get", "/tasks?limit=abc", {}, "limit"),
    ("get", "/tasks?before=-1", {}, "before"),
    ("get", f"/tasks?actor={SQL_HOSTILE}", {}, "actor"),
    ("get", f"/tasks?queue={SQL_HOSTILE}", {}, "queue"),
    ("get", "/tasks?namespace=Not_A_Namespace", {}, "namespace"),
    ("get", "/tasks?created_after=yesterday", {}, "created_after"),
    ("get", "/tasks?created_after=2026-01-01T00:00:00", {}, "created_after"),
    ("get", "/tasks/abc", {}, "task_id"),
    ("get", f"/actors/{SQL_HOSTILE}", {}, "actor"),
    ("get", "/actors/no.such.actor", {}, "actor"),
    ("post", "/tasks", {"json": {"actor": SQL_HOSTILE}}, "actor"),
    ("post", "/tasks", {"json": {"actor": "no.such.actor"}}, "actor"),
    ("post", "/tasks", {"json": {"actor": "t.record", "args": {"path": "x"}}}, "args.value"),
    ("post", "/tasks", {"json": {"actor": "t.record", "args": {"path": "x", "value": "v", "typo": 1}}}, "args.typo"),
    ("post", "/tasks", {"json": {"actor": "t.flaky", "args": {"path": "x", "fail_times": "many"}}},
     "args.fail_times"),
    ("post", "/tasks", {"json": {"actor": "t.noop", "args": {"s": "\u0000"}}}, "args"),
    ("post", "/tasks", {"json": {"actor": "t.noop", "queue": SQL_HOSTILE}}, "queue"),
    ("post", "/tasks", {"json": {"actor": "t.noop", "eta": "2026-01-01T00:00:00"}}, "eta"),
    ("post", "/tasks", {"json": {"actor": "t.noop", "unknown": 1}}, "unknown"),
    ("post", "/tasks", {"json": {"actor": "t.noop", "description": "x" * 2000}}, "description"),
    ("post", "/tasks", {"content": b"not json", "headers": {"content-type": "application/json"}}, "0"),
    ("post", "/tasks/bulk", {"json": {"action": "explode"}}, "action"),
    ("post", "/tasks/bulk", {"json": {"action": "delete", "dry_run": False}}, "filters"),
    ("post", "/tasks/bulk", {"json": {"action": "delete", "filter": {"state": ["nope"]}}}, "state"),
    ("post", "/tasks/bulk", {"json": {"action": "flush"}}, "queue"),
    ("post", "/tasks/bulk", {"json": {"action": "flush", "queue": SQL_HOSTILE, "dry_run": False}}, "queue"),
    ("patch", "/schedules/a/nightly", {"json": {"cron": "61 * * * *"}}, "cron"),
    ("patch", "/schedules/a/nightly", {"json": {"cron": "0 0 30 2 *"}}, "cron"),
    ("patch", "/schedules/a/nightly", {"json": {"time_zone": "../../etc/passwd"}}, "time_zone"),
    ("patch", "/schedules/a/nightly", {"json": {}}, "cron"),
    ("post", "/schedules", {"json": {"name": SQL_HOSTILE, "actor": "t.noop", "cron": "@daily"}}, "name"),
    ("post", "/schedules", {"json": {"name": "a/nightly", "actor": "t.noop", "cron": "@daily"}}, "name"),
    ("post", "/schedules", {"json": {"name": "a/x", "actor": "t.noop", "cron": "* * *"}}, "cron"),
    ("post", "/schedules", {"json": {"name": "a/x", "actor": "t.noop", "cron": "@daily", "time_zone": "Mars/Base"}},
     "time_zone"),
    ("post", "/schedules/a/missing/trigger", {}, "name"),
    ("post", "/tasks/999999/retry", {}, "id"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), BAD, ids=[f"{m} {p} {f}" for m, p, _, f in BAD])
def test_bad_input_is_refused_naming_the_field(client: TestClient, conn: db.Conn, seeded: dict[str, Any],
                                               method: str, path: str, kwargs: dict[str, Any], field: str) -> None:
    before = snapshot(conn)
    answer = getattr(client, method)(API + path, **kwargs)
    assert answer.status_code in (400, 404, 409), answer.text
    error = answer.json()["error"]
    assert error["field"] == field, error
    assert error["problem"]
    assert snapshot(conn) == before


def test_state_changes_need_the_csrf_header(client: TestClient, conn: db.Conn, seeded: dict[str, Any]) -> None:
    before = snapshot(conn)
    plain = TestClient(client.app, headers={"Authorization": f"Bearer {TOKEN}"})
    answer = plain.post(f"{API}/tasks/{seeded['error']}/retry")
    assert answer.status_code == 403 and answer.json()["error"]["field"] == "X-Requested-By"
    assert plain.post(f"{API}/schedules/a/nightly/trigger").status_code == 403
    assert snapshot(conn) == before
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
