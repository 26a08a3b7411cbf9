"""The real `kubetasks` console script, run as a subprocess against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from kubetasks.worker import db, pgserver

SCRIPT = Path(sys.executable).with_name("kubetasks")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SCHEDULE = """\
apiVersion: kubetasks.dev/v1alpha1
kind: Schedule
metadata:
  name: {name}
spec:
  actor: {actor}
  schedule: "{cron}"
  args: {{url: "http://127.0.0.1:9/hook"}}
"""


def kt(*args: str, code: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kubetasks ARGS`, asserting its exit code; the database comes from KUBETASKS_DATABASE__URL."""
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == code, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def kt_json(*args: str) -> Any:
    return json.loads(kt(*args, "--json").stdout)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_bad_manifests_exit_2_name_the_field_and_store_nothing(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write(folder, "a.yaml", SCHEDULE.format(name="good", actor="kubetasks.http", cron="* * * * *"))
    write(folder, "b.yaml", SCHEDULE.format(name="also-good", actor="kubetasks.http", cron="@hourly")
          + "---\n" + SCHEDULE.format(name="bad", actor="kubetasks.http", cron="* *"))
    done = kt("apply", "-f", str(folder), code=2)
    assert done.stderr.startswith(f"error: {folder}/b.yaml[1] spec.schedule: invalid cron '* *'")
    assert done.stdout == ""
    assert kt_json("schedules", "list") == []


def test_unknown_actor_is_refused_unless_told_not_to_validate(dsn: str, tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SCHEDULE.format(name="mine", actor="myapp.report", cron="@daily"))
    done = kt("apply", "-f", str(path), code=2)
    assert f"{path}[0] spec.actor: unknown actor 'myapp.report'" in done.stderr
    assert "--no-validate-actors" in done.stderr
    assert kt_json("schedules", "list") == []
    assert kt("apply", "-f", str(path), "--no-validate-actors").stdout == "default/mine created\n"


def test_apply_then_list_show_and_operate_schedules(dsn: str, tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SCHEDULE.format(name="hook", actor="kubetasks.http", cron="*/5 * * * *"))
    assert kt("apply", "-f", str(path)).stdout == "default/hook created\n"
    assert kt("apply", "-f", str(path)).stdout == "default/hook unchanged\n"
    assert kt("apply", "-f", str(path), "--dry-run").stdout == "default/hook valid (dry run)\n"

    listing = kt("schedules", "list").stdout.splitlines()
    assert listing[0].split()[:4] == ["NAME", "ACTOR", "SCHEDULE", "TIME"]
    assert listing[1].startswith("default/hook  kubetasks.http  */5 * * * *  UTC")
    [row] = kt_json("schedules", "list")
    assert (row["name"], row["cron"], row["paused"], row["source"]) == ("default/hook", "*/5 * * * *", False,
                                                                        "manifest")

    assert kt("schedules", "pause", "hook").stdout == "default/hook paused\n"
    triggered = kt("schedules", "trigger", "default/hook").stdout
    assert triggered.startswith("task ") and triggered.endswith(" queued\n")
    resumed = kt("schedules", "resume", "hook").stdout
    assert resumed.startswith("default/hook resumed; task ") and "next run" in resumed
    shown = kt_json("schedules", "show", "hook")
    assert shown["spec"]["schedule"] == "*/5 * * * *" and shown["spec"]["timeZone"] == "UTC"
    assert len(shown["runs"]) == 2 and not shown["schedule"]["paused"]
    text = kt("schedules", "show", "hook").stdout
    assert "spec:" in text and "recent runs:" in text and "manual" in text

    assert kt("schedules", "resume", "hook", code=2).stderr == (
        "error: name: schedule 'default/hook' is not paused (use `kubetasks schedules trigger` to start a run now)\n")
    assert kt("schedules", "delete", "hook").stdout == "default/hook deleted\n"
    assert "error: name: schedule 'default/hook' does not exist" in kt("schedules", "show", "hook", code=2).stderr


def test_schedules_backfill_starts_each_tick_once(dsn: str, tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SCHEDULE.format(name="hook", actor="kubetasks.http", cron="0 * * * *"))
    kt("apply", "-f", str(path))
    args = ("schedules", "backfill", "hook", "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-01T03:00:00Z")
    assert kt(*args).stdout == ("default/hook: 4 tick(s) from 2026-11-01 00:00:00Z to 2026-11-01 03:00:00Z; "
                                "4 run(s) started, 0 buffered, 0 already had a run, 0 skipped\n")
    again = kt_json(*args)
    assert (len(again["ticks"]), len(again["existing"]), again["created"]) == (4, 4, [])
    assert kt("schedules", "backfill", "hook", "--from", "yesterday", "--to", "2026-11-01T03:00:00Z",
              code=2).stderr.startswith("error: --from: 'yesterday' is not an RFC 3339 time (write e.g.")


def test_tasks_stats_list_show_json(dsn: str) -> None:
    first = kt_json("enqueue", "kubetasks.http", "--args", '{"url": "http://127.0.0.1:9/"}', "--queue", "hooks")
    second = kt_json("enqueue", "kubetasks.command", "--args", '{"argv": ["date"]}')
    assert first["created"] and first["queue"] == "hooks" and first["state"] == "queued"
    # What a worker records after a failed first attempt and a successful retry.
    with db.connect(dsn) as conn:
        conn.execute("UPDATE kubetasks.tasks SET state='successful', reason='Succeeded', attempts=2,"
                     " finished_at=now(), started_at=now() WHERE id=%s", (first["id"],))
        conn.execute("INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, worker, error, log)"
                     " VALUES (%s, 1, 'running', 'Retrying', 'w-1', 'ConnectionError: boom', 'calling hook'),"
                     " (%s, 2, 'successful', 'Succeeded', 'w-1', NULL, 'answered 200')",
                     (first["id"], first["id"]))

    stats = kt_json("tasks", "stats")
    assert stats["by_state"]["successful"] == 1 and stats["by_state"]["queued"] == 1 and stats["total"] == 2
    assert stats["by_actor"]["kubetasks.http"]["successful"] == 1
    table = kt("tasks", "stats").stdout
    assert "ACTOR" in table and "kubetasks.command" in table

    assert [t["id"] for t in kt_json("tasks", "list")] == [second["id"], first["id"]]
    assert [t["id"] for t in kt_json("tasks", "list", "--state", "queued")] == [second["id"]]
    assert [t["id"] for t in kt_json("tasks", "list", "--queue", "hooks")] == [first["id"]]
    assert [t["id"] for t in kt_json("tasks", "list", "--exclude-successful")] == [second["id"]]
    assert len(kt_json("tasks", "list", "--limit", "1")) == 1
    assert kt("tasks", "list", "--actor", "nobody").stdout == "no tasks\n"

    shown = kt_json("tasks", "show", str(first["id"]))
    assert shown["current_execution"]["log"] == "answered 200"
    assert [a["attempt"] for a in shown["previous_executions"]] == [1]
    text = kt("tasks", "show", str(first["id"])).stdout
    current, previous = text.split("current execution:")[1].split("previous executions:")
    assert "attempt 2: successful" in current and "| answered 200" in current
    assert "attempt 1: running (Retrying)" in previous and "error: ConnectionError: boom" in previous

    assert kt("tasks", "show", "999999", code=2).stderr == "error: task 999999 does not exist\n"


def test_task_operations_and_queues(dsn: str) -> None:
    task = kt_json("enqueue", "kubetasks.http", "--args", '{"url": "http://x/"}', "--dedup-key", "k")
    again = kt("enqueue", "kubetasks.http", "--args", '{"url": "http://x/"}', "--dedup-key", "k").stdout
    assert f"task {task['id']} already holds dedup key 'k'" in again
    assert kt("queue", "depth").stdout.splitlines()[1].split() == ["default", "1", "0", "0"]
    assert kt("tasks", "retry", str(task["id"]), code=2).stderr.startswith("error: id: task")
    assert kt("tasks", "cancel", str(task["id"])).stdout == f"task {task['id']} cancelled\n"
    assert kt("tasks", "cancel", str(task["id"])).stdout == f"task {task['id']} had already finished (cancelled)\n"
    assert kt("tasks", "retry", str(task["id"])).stdout == f"task {task['id']} queued again\n"
    assert kt("queue", "flush", "default").stdout == "removed 1 queued task from default\n"
    kt("enqueue", "kubetasks.http", "--args", '{"url": "http://x/"}', "--eta", "2099-01-01T00:00:00Z")
    assert kt_json("queue", "depth") == [{"queue": "default", "runnable": 0, "delayed": 1, "executing": 0}]
    assert kt("tasks", "delete", code=2).stderr.startswith("error: filters:")
    assert kt("tasks", "delete", "--actor", "kubetasks.http").stdout == "deleted 0 tasks\n"
    assert kt("tasks", "delete", "--actor", "kubetasks.http", "--include-unfinished").stdout == "deleted 1 task\n"


def test_queue_pause_resume_limit_and_show(dsn: str) -> None:
    assert kt("queues", "show").stdout == "no queue is paused or limited\n"
    assert kt("queue", "pause", "billing").stdout.startswith("paused queue billing: workers claim nothing")
    assert kt("queues", "limit", "billing", "--concurrency", "3", "--key", "customer_id", "--per-key", "1",
              "--rate", "50/s").stdout == ("queue billing: paused, at most 3 running, at most 1 per customer_id, "
                                           "at most 50 starts per 1s\n")
    kt("enqueue", "kubetasks.http", "--queue", "billing", "--args", '{"url": "http://x/"}')
    shown = kt_json("queue", "show", "billing")
    assert shown == {
        "name": "billing", "paused": True, "concurrency_limit": 3, "concurrency_key": "customer_id",
        "key_concurrency_limit": 1, "rate_limit": 50, "rate_period": 1.0, "limited": True,
        "runnable": 1, "running": 0, "held": 1}
    assert kt("queue", "resume", "billing").stdout == "resumed queue billing\n"
    assert kt("queue", "limit", "billing", "--concurrency", "none", "--rate", "100/1m").stdout == (
        "queue billing: active, at most 1 per customer_id, at most 100 starts per 60s\n")
    lines = kt("queues", "show").stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "STATE", "CONCURRENCY", "PER", "KEY", "RATE", "RUNNING", "RUNNABLE", "HELD"]
    assert lines[1].split() == ["billing", "active", "-", "1", "per", "customer_id", "100/60s", "0", "1", "0"]
    cleared = kt("queue", "limit", "billing", "--key", "none", "--rate", "none").stdout
    assert cleared == "queue billing: active, no limits\n"


@pytest.mark.parametrize(("args", "message"), [
    (["enqueue", "kubetasks.http", "--args", "{nope"], "error: --args: is not JSON"),
    (["enqueue", "kubetasks.http", "--args", "[1"], "error: --args: is not JSON"),
    (["enqueue", "kubetasks.http", "--eta", "tomorrow"], "error: --eta: 'tomorrow' is not an ISO 8601 time"),
    (["enqueue", "kubetasks.http", "--eta", "2030-01-01T00:00"], "error: --eta: '2030-01-01T00:00' has no time zone"),
    (["enqueue", "myapp.nope"], "error: actor: unknown actor 'myapp.nope'"),
    (["enqueue", "kubetasks.http", "--queue", "bad queue"], "error: queue: 'bad queue' is not a valid queue name"),
    (["enqueue", "kubetasks.http", "--args", '"text"'], "error: args: must be a JSON object"),
    (["queue", "pause", "bad queue"], "error: queue: 'bad queue' is not a valid queue name"),
    (["queue", "limit", "q", "--concurrency", "0"], "error: --concurrency: '0' is not a whole number of at least 1"),
    (["queue", "limit", "q", "--rate", "fast"], "error: --rate: 'fast' is not a rate (write STARTS/PERIOD"),
    (["queue", "limit", "q", "--per-key", "1"], "error: --key: a per-key limit needs both"),
    (["queue", "limit", "q"], "error: limit: no limit given"),
])
def test_bad_input_exits_2_with_one_line(dsn: str, args: list[str], message: str) -> None:
    done = kt(*args, code=2)
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1
    assert kt_json("tasks", "list") == []


def test_unreachable_database_names_host_and_port_but_not_the_password(dsn: str) -> None:
    done = kt("--database-url", "postgresql://kt:s3cretpw@127.0.0.1:1/kubetasks", "tasks", "list", code=2)
    assert done.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1/kubetasks: ")
    assert "KUBETASKS_DATABASE__URL" in done.stderr and "s3cretpw" not in done.stderr


def test_migrate_an_empty_database_and_refuse_an_unmigrated_one(pg_server: pgserver.LocalPostgres) -> None:
    url = pg_server.create_database(f"fresh_{os.getpid()}")
    env = {"KUBETASKS_DATABASE__URL": url}
    assert "run `kubetasks migrate` first" in kt("schedules", "list", code=2, env=env).stderr
    applied = kt("migrate", env=env).stdout
    assert applied.startswith("applied 0001_initial.sql, 0002_")
    assert kt("migrate", env=env).stdout == "schema is up to date\n"
    assert kt("schedules", "list", env=env).stdout.startswith("no schedules")


@pytest.mark.slow
def test_dev_runs_the_examples_end_to_end() -> None:
    done = kt("dev", "-f", str(EXAMPLES), "--duration", "6", "--threads", "2")
    out = done.stdout
    assert "triggered each schedule once" in out
    assert "summary:" in out and " successful" in out.split("summary:")[1]
    assert "default/inventory: " in out and " warning" in out.split("default/inventory: ")[-1].splitlines()[0]
    # kubetasks.command runs `date`: the dev loop's own allow-list reaches the worker with its settings.
    assert "default/say-the-date: " in out and " successful" in out.split("default/say-the-date: ")[-1].splitlines()[0]


@pytest.mark.slow
def test_dev_serves_the_dashboard_with_the_demo_tasks() -> None:
    proc = subprocess.Popen([str(SCRIPT), "dev", "-f", str(EXAMPLES), "--duration", "20", "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:  # the link is printed before the worker starts
            if line.startswith("dashboard: "):
                url = line.split(" ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:"), "dev printed no dashboard link"
        base, _, token = url.partition("/#token=")

        def actors_seen() -> set[str]:
            request = urllib.request.Request(f"{base}/api/v1/tasks?limit=50",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return {item["actor"] for item in json.load(response)["items"]}

        seen = wait_for(lambda: actors_seen() >= {"kubetasks.command"}, timeout=20, what="demo tasks listed")
        assert seen
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/v1/tasks", timeout=5)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        proc.wait(30)
