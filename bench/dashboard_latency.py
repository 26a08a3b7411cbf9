"""Dashboard latency with a million tasks: the default list, a filtered list, a task's detail and the overview.

    .venv/bin/python bench/dashboard_latency.py                 # 1 000 000 tasks on a throwaway PostgreSQL
    .venv/bin/python bench/dashboard_latency.py --rows 200000 --dsn postgresql://…/empty_db --json out.json

The rows are made by one `INSERT … SELECT FROM generate_series` (states, actors, queues, schedules, objects and
times spread like a busy system's month), then ANALYZE. Each route is asked `--repeat` times through the ASGI app
in-process (no network: what is timed is the server's work, JSON included); the median and p95 are printed,
with the SQL execution time of each route's main query from EXPLAIN ANALYZE and the rows it read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetasks.worker import db, pgserver

FILL = """
INSERT INTO kubetasks.tasks (queue, actor, args, state, reason, attempts, max_retries, time_limit, error,
                             schedule_name, object_ref, created_at, started_at, finished_at, updated_at, eta)
SELECT 'q' || (g %% 5), 'app.actor_' || (g %% 20), jsonb_build_object('n', g),
       s.state::kubetasks.task_state,
       CASE s.state WHEN 'successful' THEN 'Succeeded' WHEN 'error' THEN 'Failed' WHEN 'warning'
            THEN 'SucceededWithWarnings' WHEN 'cancelled' THEN 'Cancelled' ELSE 'Queued' END,
       CASE WHEN s.state = 'queued' THEN 0 ELSE 1 END, 3, 600,
       CASE WHEN s.state = 'error' THEN 'ValueError: boom ' || g END,
       CASE WHEN g %% 10 = 0 THEN 'ns' || (g %% 7) || '/schedule-' || (g %% 50) END,
       CASE WHEN g %% 20 = 1 THEN 'invoice/' || (g %% 5000) END,
       t.created, t.created, CASE WHEN s.state <> 'queued' THEN t.created + interval '2 seconds' END,
       t.created + interval '2 seconds', t.created
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (SELECT CASE WHEN g > %(rows)s - 200 THEN 'queued'
                                WHEN g %% 100 < 90 THEN 'successful' WHEN g %% 100 < 95 THEN 'error'
                                WHEN g %% 100 < 98 THEN 'warning' WHEN g %% 100 < 99 THEN 'cancelled'
                                ELSE 'successful' END AS state) AS s
CROSS JOIN LATERAL (SELECT now() - interval '30 days' * (1 - g::float8 / %(rows)s) AS created) AS t
"""
ATTEMPTS = """
INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, started_at, finished_at, error, log)
SELECT id, 1, state, reason, started_at, finished_at, error, repeat('log line of task ' || id || E'\\n', 20)
FROM kubetasks.tasks WHERE state = 'error'
"""


def fill(conn: db.Conn, rows: int) -> float:
    began = time.monotonic()
    conn.execute(FILL, {"rows": rows})
    conn.execute(ATTEMPTS)
    conn.execute("ANALYZE kubetasks.tasks")
    conn.execute("ANALYZE kubetasks.task_attempts")
    return time.monotonic() - began


def _detail_id(conn: db.Conn) -> int:
    row = conn.execute("SELECT max(id) AS id FROM kubetasks.tasks WHERE state = 'error'").fetchone()
    assert row is not None
    return int(row["id"])


def routes(conn: db.Conn) -> dict[str, str]:
    detail = _detail_id(conn)
    return {
        "default list (standalone, exclude successful)": "/api/v1/tasks?standalone=true&exclude_successful=true",
        "filtered list (state=error, actor)": "/api/v1/tasks?state=error&actor=app.actor_11",
        "filtered list (actor)": "/api/v1/tasks?actor=app.actor_11",
        "filtered list (state, actor: no match, worst case)": "/api/v1/tasks?state=error&actor=app.actor_7",
        "filtered list (schedule)": "/api/v1/tasks?schedule=ns3/schedule-10",
        "filtered list (state=queued)": "/api/v1/tasks?state=queued",
        "filtered list (page 100, keyset)": f"/api/v1/tasks?before={detail - 5000}",
        "task detail with attempts": f"/api/v1/tasks/{detail}",
        "overview (uncached)": "/api/v1/overview",
        "schedules": "/api/v1/schedules",
    }


LISTS: dict[str, dict[str, Any]] = {
    "default list (standalone, exclude successful)": {"standalone": True, "exclude_successful": True},
    "filtered list (state=error, actor)": {"states": ("error",), "actors": ("app.actor_11",)},
    "filtered list (actor)": {"actors": ("app.actor_11",)},
    "filtered list (state=queued)": {"states": ("queued",)},
}
EXPLAINS = {
    "overview: live counts": "SELECT actor, state::text AS state, count(*) FROM kubetasks.tasks "
                             "WHERE finished_at IS NULL AND state IN ('queued', 'running') GROUP BY actor, state",
    "overview: last hour": "SELECT actor, state::text, count(*) FROM kubetasks.tasks "
                           "WHERE finished_at >= now() - interval '1 hour' GROUP BY actor, state",
    "overview: last day": "SELECT actor, state::text, count(*) FROM kubetasks.tasks "
                          "WHERE finished_at >= now() - interval '1 day' GROUP BY actor, state",
    "overview: queue depth": "SELECT queue, count(*) FILTER (WHERE worker IS NULL AND eta <= now()) "
                             "FROM kubetasks.tasks WHERE finished_at IS NULL AND state IN ('queued', 'running') "
                             "GROUP BY queue",
    "queue depth without the finished_at condition (for comparison)":
        "SELECT queue, count(*) FILTER (WHERE worker IS NULL AND eta <= now()) "
        "FROM kubetasks.tasks WHERE state IN ('queued', 'running') GROUP BY queue",
    "count(*) of the whole table (what the overview avoids)": "SELECT count(*) FROM kubetasks.tasks",
}


def explain(conn: db.Conn, query: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params).fetchone()
    assert row is not None
    plan = row["QUERY PLAN"][0]

    def rows_read(node: dict[str, Any]) -> int:
        own = int(node.get("Actual Rows", 0) * node.get("Actual Loops", 1)) if "Scan" in node["Node Type"] else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    def seq_scans(node: dict[str, Any]) -> list[str]:
        own = [node.get("Relation Name", "")] if node["Node Type"] == "Seq Scan" else []
        return own + [name for child in node.get("Plans", []) for name in seq_scans(child)]

    return {"ms": round(plan["Execution Time"], 2), "rows_read": rows_read(plan["Plan"]),
            "top": plan["Plan"]["Node Type"], "seq_scans": seq_scans(plan["Plan"])}


def measure(dsn: str, repeat: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from kubetasks.worker.dashboard import counts, tasks
    from kubetasks.worker.dashboard.app import DashboardConfig, create_app
    from kubetasks.worker.dashboard.auth import TokenAuth
    from kubetasks.worker.dashboard.scope import EVERYTHING

    token = "bench-token-0123456789"
    results: dict[str, Any] = {"routes": {}, "sql": {}}
    with db.connect(dsn) as conn, TestClient(create_app(DashboardConfig(dsn, TokenAuth(token))),
                                             headers={"Authorization": f"Bearer {token}"}) as client:
        for name, path in routes(conn).items():
            timings = []
            for _ in range(repeat + 2):
                counts._overview_cache.clear()
                began = time.perf_counter()
                answer = client.get(path)
                timings.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200, (path, answer.text)
            timings = sorted(timings[2:])  # the first two warm the pool and the caches
            results["routes"][name] = {"path": path, "median_ms": round(statistics.median(timings), 2),
                                       "p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 2)}
        client.get("/api/v1/overview")
        cached = []
        for _ in range(repeat):
            began = time.perf_counter()
            client.get("/api/v1/overview")
            cached.append((time.perf_counter() - began) * 1000)
        cached.sort()
        results["routes"]["overview (cached, within 5 s)"] = {
            "path": "/api/v1/overview", "median_ms": round(statistics.median(cached), 2),
            "p95_ms": round(cached[int(0.95 * (len(cached) - 1))], 2)}
        for name, fields in LISTS.items():
            statement, params = tasks.list_statement(tasks.TaskQuery(**fields), EVERYTHING, limit=51)
            results["sql"][name] = explain(conn, statement.as_string(conn), params)
        for name, query in EXPLAINS.items():
            results["sql"][name] = explain(conn, query)
    return results


def report(results: dict[str, Any], rows: int, fill_seconds: float | None) -> str:
    lines = [f"{rows:,} tasks" + (f" (filled in {fill_seconds:.0f} s)" if fill_seconds is not None else ""), "",
             "| route | path | median ms | p95 ms |", "| --- | --- | ---: | ---: |"]
    for name, r in results["routes"].items():
        p95 = r["p95_ms"] if r["p95_ms"] is not None else ""
        lines.append(f"| {name} | `{r['path']}` | {r['median_ms']} | {p95} |")
    lines += ["", "| SQL (EXPLAIN ANALYZE) | execution ms | rows read | seq scans |", "| --- | ---: | ---: | --- |"]
    for name, r in results["sql"].items():
        lines.append(f"| {name} | {r['ms']} | {r['rows_read']:,} | {', '.join(r['seq_scans']) or 'none'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--dsn", help="An empty database to migrate and fill (default: a throwaway server).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if dsn is None:
        bindir = pgserver.find_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries: run `make postgres` first")
        server = pgserver.LocalPostgres(bindir, Path(tempfile.mkdtemp(prefix="kubetasks-bench-")))
        server.start()
        dsn = server.create_database("bench")
    try:
        db.migrate(dsn)
        with db.connect(dsn) as conn:
            seconds = fill(conn, args.rows)
        results = measure(dsn, args.repeat)
        print(report(results, args.rows, seconds))
        if args.json:
            args.json.write_text(json.dumps({"rows": args.rows, "fill_seconds": seconds, **results}, indent=2))
    finally:
        if server is not None:
            server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
