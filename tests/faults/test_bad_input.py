"""Case 9: bad input everywhere, through the Python API and through the CLI (`kubetasks apply -f`,
`kubetasks enqueue`). Each must be refused with a clear error naming the field (exit code 2 and one
`error: …` line per problem from the CLI, never a traceback), and nothing stored may change: the tables are
snapshotted before and after, on a database that already holds a schedule, tasks and attempts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import worker_actors
from faults.conftest import FaultReport
from psycopg import sql

from kubetasks.worker import db, manifests, queue, schedules
from kubetasks.worker.errors import InvalidInput
from kubetasks.worker.manifests import ScheduleSpec
from kubetasks.worker.settings import Settings

SCRIPT = Path(sys.executable).with_name("kubetasks")
ACTORS_PATH = str(Path(worker_actors.__file__).parent)
SMALL_ARGS = 1000  # KUBETASKS_WORKER__ARGS_MAX_BYTES for the "too large" cases
SQL_HOSTILE = "x'; DROP TABLE kubetasks.tasks; --"

HEAD = "apiVersion: kubetasks.dev/v1alpha1\nkind: Schedule\n"


def schedule(name: str = "bad", spec: str = 'actor: t.noop\n  schedule: "@daily"', head: str = HEAD) -> str:
    return f"{head}metadata:\n  name: {name}\nspec:\n  {spec}\n"


# Refused while reading the files: file name -> (content, what the error must name after the file name).
MALFORMED = {
    "syntax.yaml": (HEAD + "metadata: {name: a\nspec: [\n", ": is not valid YAML"),
    "kind.yaml": (schedule(head="apiVersion: kubetasks.dev/v1alpha1\nkind: CronJob\n"), "[0] kind:"),
    "version.yaml": (schedule(head="apiVersion: batch/v1\nkind: Schedule\n"), "[0] apiVersion:"),
    "list.yaml": ("- not\n- a mapping\n", "[0]: is a list, not a mapping"),
    "no-actor.yaml": (schedule(spec='schedule: "@daily"'), "[0] spec.actor:"),
    "no-spec.yaml": (HEAD + "metadata: {name: a}\n", "[0] spec:"),
    "cron.yaml": (schedule(spec='actor: t.noop\n  schedule: "61 * * * *"'), "[0] spec.schedule:"),
    "cron-fields.yaml": (schedule(spec='actor: t.noop\n  schedule: "* * *"'), "[0] spec.schedule:"),
    "cron-never.yaml": (schedule(spec='actor: t.noop\n  schedule: "0 0 30 2 *"'), "[0] spec.schedule:"),
    "tz.yaml": (schedule(spec='actor: t.noop\n  schedule: "@daily"\n  timeZone: Mars/Olympus_Mons'),
                "[0] spec.timeZone:"),
    "tz-path.yaml": (schedule(spec='actor: t.noop\n  schedule: "@daily"\n  timeZone: ../../../etc/passwd'),
                     "[0] spec.timeZone:"),
    "typed.yaml": (schedule(spec='actor: t.noop\n  schedule: "@daily"\n  priority: "5"'), "[0] spec.priority:"),
    "typo.yaml": (schedule(spec='actor: t.noop\n  schedule: "@daily"\n  scheduel: "@hourly"'), "[0] spec.scheduel:"),
    "sql-name.yaml": (schedule(name=f'"{SQL_HOSTILE}"'), "[0] metadata.name:"),
    "huge-name.yaml": (schedule(name="Ω" * 100_000), "[0] metadata.name:"),
    "sql-actor.yaml": (schedule(spec=f'actor: "{SQL_HOSTILE}"\n  schedule: "@daily"'), "[0] spec.actor:"),
}
# Refused when the schedules are checked before storing: need the actor registry and the args limit.
UNSTORABLE = {
    "unknown-actor.yaml": (schedule(name="u1", spec='actor: no.such.actor\n  schedule: "@daily"'), "[0] spec.actor:"),
    "nul-args.yaml": (schedule(name="u2", spec='actor: t.noop\n  schedule: "@daily"\n  args: {a: "b\\0c"}'),
                      "[0] spec.args:"),
    "big-args.yaml": (schedule(name="u3", spec=f'actor: t.noop\n  schedule: "@daily"\n  args: {{a: "{"€" * 400}"}}'),
                      "[0] spec.args:"),
    # Valid on its own (an update of the stored schedule): must not be applied next to bad documents.
    "seeded.yaml": (schedule(name="seeded", spec='actor: t.noop\n  schedule: "@hourly"'), ""),
}


def write_all(folder: Path, files: dict[str, tuple[str, str]]) -> dict[Path, str]:
    folder.mkdir()
    for name, (text, _) in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return {folder / name: expected for name, (_, expected) in files.items() if expected}


def seed(conn: db.Conn) -> None:
    schedules.apply(conn, "default/seeded", ScheduleSpec(actor="t.noop", schedule="@daily"))
    queue.enqueue(conn, "t.noop", {"q": SQL_HOSTILE}, dedup_key="seeded")
    done = queue.enqueue(conn, "t.noop", {})
    conn.execute("UPDATE kubetasks.tasks SET state = 'error', reason = 'Failed', attempts = 1,"
                 " finished_at = now() WHERE id = %s", (done.id,))
    conn.execute("INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, error)"
                 " VALUES (%s, 1, 'error', 'Failed', 'boom')", (done.id,))


def snapshot(conn: db.Conn) -> dict[str, list[Any]]:
    """Every stored row of the kubetasks tables, and where the id sequence stands."""
    tables = ("tasks", "task_attempts", "schedules", "schema_migrations")
    rows = {table: [r["row"] for r in conn.execute(sql.SQL(
        "SELECT to_jsonb(x)::text AS row FROM kubetasks.{} x ORDER BY 1").format(sql.Identifier(table)))]
        for table in tables}
    rows["sequences"] = list(conn.execute("SELECT sequencename, last_value FROM pg_sequences"
                                          " WHERE schemaname = 'kubetasks' ORDER BY 1"))
    return rows


def refused(call: Callable[[], object], expected: str) -> str:
    """'' when `call` raises InvalidInput whose message names `expected` (a field, then ':'); else what
    happened instead."""
    try:
        call()
    except InvalidInput as exc:
        return "" if expected in str(exc) else f"InvalidInput not naming {expected!r}: {str(exc)[:160]}"
    except Exception as exc:
        return f"{type(exc).__name__} instead of InvalidInput naming {expected!r}: {str(exc)[:160]}"
    return "accepted"


def kubetasks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ACTORS_PATH, **(env or {})})


def cli_refused(args: list[str], expected: list[str], env: dict[str, str] | None = None) -> str:
    """'' when the CLI exits 2 with `error: …` lines naming each of `expected` (or click's own usage error for
    an option out of its range), and no traceback."""
    done = kubetasks(*args, env=env)
    missing = [e for e in expected if e not in done.stderr]
    clear = done.stderr.startswith("error: ") or "\nError: Invalid value for" in done.stderr
    if done.returncode == 2 and clear and not missing and "Traceback" not in done.stderr:
        return ""
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return f"exit {done.returncode}, missing {missing[:3]}, stdout {done.stdout.strip()[:80]!r}, stderr …{last[:160]!r}"


def run_all(checks: Mapping[str, Callable[[], str]], parallel: int = 1) -> dict[str, str]:
    with ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(check) for name, check in checks.items()}
    return {name: problem for name, f in futures.items() if (problem := f.result())}


def report(fault_report: FaultReport, before: dict[str, list[Any]], after: dict[str, list[Any]], tried: int,
           problems: dict[str, str], what: str) -> None:
    stored = len(after["tasks"]) - len(before["tasks"]) + len(after["schedules"]) - len(before["schedules"])
    changed = [table for table in before if before[table] != after[table]]
    fault_report.record(enqueued=stored, succeeded=0, failed=0, lost=0, duplicated=0,
                        notes=f"{tried} {what}; {tried - len(problems)} refused cleanly naming the field; "
                        + (f"NOT: {problems}; " if problems else "")
                        + (f"changed: {changed}" if changed else "tables unchanged"))


def spec(**fields: Any) -> dict[str, Any]:
    return {"actor": "t.noop", "schedule": "@daily", **fields}


def test_bad_input_through_the_python_api_is_refused_naming_the_field(
        conn: db.Conn, settings: Settings, tmp_path: Path, fault_report: FaultReport) -> None:
    seed(conn)
    small = settings.model_copy(update={"worker": settings.worker.model_copy(update={"args_max_bytes": SMALL_ARGS})})
    malformed = write_all(tmp_path / "malformed", MALFORMED)
    unstorable = write_all(tmp_path / "unstorable", UNSTORABLE)
    checks: dict[str, Callable[[], object]] = {
        "unknown actor": lambda: queue.enqueue(conn, "no.such.actor", {}),
        "args not JSON (a set)": lambda: queue.enqueue(conn, "t.noop", {"a": {1, 2}}),
        "args NaN": lambda: queue.enqueue(conn, "t.noop", {"a": float("nan")}),
        "args a string": lambda: queue.enqueue(conn, "t.noop", "not an object"),
        "args too large": lambda: queue.enqueue(conn, "t.noop", {"a": "x" * (1024 * 1024 + 1)}),
        "args huge unicode": lambda: queue.enqueue(conn, "t.noop", {"a": "€" * 400_000}),
        "args NUL in a value": lambda: queue.enqueue(conn, "t.noop", {"a": "b\x00c"}),
        "args NUL in a key": lambda: queue.enqueue(conn, "t.noop", {"a\x00": 1}),
        "bulk args with one NUL": lambda: queue.enqueue_many(conn, "t.noop", [{}, {"a": "\x00"}, {}]),
        "dedup key too long": lambda: queue.enqueue(conn, "t.noop", {}, dedup_key="k" * 513),
        "naive eta": lambda: queue.enqueue(conn, "t.noop", {}, eta=datetime(2030, 1, 1)),
        "negative retries": lambda: queue.enqueue(conn, "t.noop", {}, max_retries=-1),
        "zero time limit": lambda: queue.enqueue(conn, "t.noop", {}, time_limit=0),
        "spec invalid cron": lambda: manifests.parse_spec(spec(schedule="*/0 * * * *")),
        "spec invalid time zone": lambda: manifests.parse_spec(spec(timeZone="Europe/Nowhere")),
        "spec missing actor": lambda: manifests.parse_spec({"schedule": "@daily"}),
        "apply unknown actor": lambda: schedules.apply(conn, "default/seeded", ScheduleSpec(
            actor="no.such.actor", schedule="@hourly")),
        "apply args too large": lambda: schedules.apply(conn, "default/seeded", ScheduleSpec(
            actor="t.noop", schedule="@hourly", args={"a": "x" * SMALL_ARGS}), settings=small),
        "apply bad name": lambda: schedules.apply(conn, "default/UPPER", ScheduleSpec(actor="t.noop",
                                                                                     schedule="@daily")),
    }
    expected = {"unknown actor": "actor", "bulk args with one NUL": "args[1]", "dedup key too long": "dedup_key",
                "naive eta": "eta", "negative retries": "max_retries", "zero time limit": "time_limit",
                "spec invalid cron": "spec.schedule", "spec invalid time zone": "spec.timeZone",
                "spec missing actor": "spec.actor", "apply unknown actor": "spec.actor",
                "apply args too large": "spec.args", "apply bad name": "name"}
    tests = {name: partial(refused, call, expected.get(name, "args") + ":") for name, call in checks.items()}
    for path, field in malformed.items():
        tests[f"manifest {path.name}"] = partial(refused, partial(manifests.load_manifests, path), f"{path}{field}")
    for source, manifest in manifests.load_sources(unstorable):
        field = UNSTORABLE[Path(source.split("[")[0]).name][1].split(" ", 1)[1]
        if field:
            tests[f"apply {source}"] = partial(refused, partial(schedules.apply, conn, manifest.row_name,
                                                                manifest.spec, settings=small), field)
    before = snapshot(conn)
    problems = run_all(tests)
    after = snapshot(conn)
    report(fault_report, before, after, len(tests), problems, "bad inputs through the Python API")
    assert problems == {}
    assert after == before


def test_bad_input_through_the_cli_exits_2_naming_the_field(
        conn: db.Conn, tmp_path: Path, fault_report: FaultReport) -> None:
    seed(conn)
    malformed = write_all(tmp_path / "malformed", MALFORMED)
    unstorable = write_all(tmp_path / "unstorable", UNSTORABLE)
    small = {"KUBETASKS_WORKER__ARGS_MAX_BYTES": str(SMALL_ARGS)}
    enqueue = ["enqueue", "t.noop", "--module", "worker_actors"]
    cases: dict[str, tuple[list[str], list[str], dict[str, str] | None]] = {
        "args not JSON": ([*enqueue, "--args", "{'a': 1}"], ["error: --args: is not JSON"], None),
        "args a string": ([*enqueue, "--args", '"text"'], ["error: args:"], None),
        "args NaN": ([*enqueue, "--args", '{"a": NaN}'], ["error: args:"], None),
        "args NUL": ([*enqueue, "--args", '{"a": "\\u0000"}'], ["error: args: contains a NUL"], None),
        "args too large": ([*enqueue, "--args", '{"a": "' + "€" * 400 + '"}'], ["error: args: is 12"], small),
        "unknown actor": (["enqueue", "no.such.actor", "--module", "worker_actors"], ["error: actor:"], None),
        "dedup key too long": ([*enqueue, "--dedup-key", "k" * 600], ["error: dedup_key:"], None),
        "eta not a time": ([*enqueue, "--eta", "next tuesday"], ["error: --eta:"], None),
        "eta naive": ([*enqueue, "--eta", "2030-01-01T00:00:00"], ["error: --eta:"], None),
        "priority out of range": ([*enqueue, "--priority", "99999"], ["--priority"], None),
        "apply missing path": (["apply", "-f", str(tmp_path / "nope.yaml")], ["nope.yaml: does not exist"], None),
        "apply malformed folder": (["apply", "-f", str(tmp_path / "malformed")],
                                   [f"{p}{f}" for p, f in malformed.items()], None),
        "apply unstorable folder": (["apply", "-f", str(tmp_path / "unstorable"), "--module", "worker_actors"],
                                    [f"{p}{f}" for p, f in unstorable.items()], small),
    }
    tests = {name: partial(cli_refused, args, exp, env) for name, (args, exp, env) in cases.items()}
    before = snapshot(conn)
    problems = run_all(tests, parallel=3)
    after = snapshot(conn)
    report(fault_report, before, after, len(tests), problems, "bad inputs through the CLI")
    assert problems == {}
    assert after == before


# --- hostile strings: SQL metacharacters, huge unicode, NUL, lone surrogates, trailing newlines ------------

def test_hostile_strings_through_the_python_api_are_refused_naming_the_field(
        conn: db.Conn, fault_report: FaultReport) -> None:
    seed(conn)

    def enqueue(actor: str = "t.noop", args: Any = None, **kwargs: Any) -> Callable[[], object]:
        return partial(queue.enqueue, conn, actor, args or {}, validate=False, **kwargs)

    def apply(name: str = "default/seeded", **fields: Any) -> Callable[[], object]:
        def call() -> object:
            return schedules.apply(conn, name, manifests.parse_spec(spec(**fields)))
        return call

    checks: dict[str, tuple[Callable[[], object], str]] = {
        "actor with SQL": (enqueue(SQL_HOSTILE), "actor"),
        "actor huge unicode": (enqueue("é" * 100_000), "actor"),
        "actor with NUL": (enqueue("t.noop\x00"), "actor"),
        "actor with trailing newline": (enqueue("t.noop\n"), "actor"),
        "queue with SQL": (enqueue(queue=SQL_HOSTILE), "queue"),
        "queue with NUL": (enqueue(queue="default\x00"), "queue"),
        "queue with trailing newline": (enqueue(queue="default\n"), "queue"),
        "args with a lone surrogate": (enqueue(args={"s": "\ud800"}), "args"),
        "args key with a lone surrogate": (enqueue(args={"\udfff": 1}), "args"),
        "dedup key with NUL": (enqueue(dedup_key="a\x00b"), "dedup_key"),
        "schedule name with SQL": (apply(f"default/{SQL_HOSTILE}"), "name"),
        "schedule name with trailing newline": (apply("default/seeded\n"), "name"),
        "spec queue with trailing newline": (apply(queue="default\n"), "spec.queue"),
        "spec actor with trailing newline": (apply(actor="t.noop\n"), "spec.actor"),
        "spec args with a lone surrogate": (apply(args={"s": "\ud800"}), "spec.args"),
        "manifest name with trailing newline": (partial(manifests.parse_manifest, {
            "apiVersion": manifests.API_VERSION, "kind": "Schedule", "metadata": {"name": "seeded\n"},
            "spec": spec()}), "metadata.name"),
    }
    before = snapshot(conn)
    problems = run_all({name: partial(refused, call, field + ":") for name, (call, field) in checks.items()})
    after = snapshot(conn)
    report(fault_report, before, after, len(checks), problems, "hostile strings through the Python API")
    assert problems == {}
    assert after == before


def test_hostile_strings_through_the_cli_are_refused_naming_the_field(
        conn: db.Conn, tmp_path: Path, fault_report: FaultReport) -> None:
    seed(conn)
    folder = tmp_path / "hostile"
    folder.mkdir()
    files = {
        "name-newline.yaml": (schedule(name='"seeded\\n"'), "[0] metadata.name:"),
        "queue-newline.yaml": (schedule(spec='actor: t.noop\n  schedule: "@hourly"\n  queue: "default\\n"'),
                               "[0] spec.queue:"),
        "args-surrogate.yaml": (schedule(name="seeded", spec='actor: t.noop\n  schedule: "@hourly"\n'
                                         '  args: {s: "\\ud800"}'), "[0] spec.args:"),
    }
    for name, (text, _) in files.items():
        (folder / name).write_text(text)
    enqueue = ["enqueue", "t.noop", "--module", "worker_actors"]
    cases: dict[str, tuple[list[str], str]] = {
        "actor with SQL": (["enqueue", SQL_HOSTILE, "--no-validate"], "error: actor:"),
        "actor huge unicode": (["enqueue", "ü" * 30_000, "--no-validate"], "error: actor:"),
        "actor with trailing newline": (["enqueue", "t.noop\n", "--no-validate"], "error: actor:"),
        "queue with SQL": ([*enqueue, "--queue", SQL_HOSTILE], "error: queue:"),
        "queue with trailing newline": ([*enqueue, "--queue", "default\n"], "error: queue:"),
        "args with a lone surrogate": ([*enqueue, "--args", '{"s": "\\ud800"}'], "error: args:"),
        **{f"apply {name}": (["apply", "-f", str(folder / name), "--module", "worker_actors"],
                             f"error: {folder / name}{field}") for name, (_, field) in files.items()},
    }
    before = snapshot(conn)
    problems = run_all({name: partial(cli_refused, args, [exp]) for name, (args, exp) in cases.items()}, parallel=3)
    after = snapshot(conn)
    report(fault_report, before, after, len(cases), problems, "hostile strings through the CLI")
    assert problems == {}
    assert after == before
