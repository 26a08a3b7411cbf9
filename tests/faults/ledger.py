"""What really happened to the tasks of a fault case, counted two ways and compared.

Executions are counted from the files the test actors write (`t.record` appends its value to one file,
`t.sleep` and `t.wait_file` write "start" to a file per task); outcomes, attempts and `WorkerLost` rows come
from the database. A `Tally` sums them per case:

- lost: enqueued but not in a final state (or gone) when the case ends;
- duplicated: executions that the recorded attempts do not explain. Delivery is at-least-once, so a task may
  run again, but only after an attempt that did not end in an outcome (a `WorkerLost` row) or a retry.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kubetasks.worker import db, protocol

Key = Callable[[Any], str]


def by_value(args: Any) -> str:
    """Key of a `t.record` task: the value it appends."""
    return str(args["value"])


def by_path(args: Any) -> str:
    """Key of a `t.sleep` / `t.wait_file` task: its own file."""
    return str(args["path"])


def record_runs(path: Path) -> collections.Counter[str]:
    """Executions per value in a file `t.record` appends to."""
    return collections.Counter(path.read_text().split() if path.exists() else [])


def start_runs(folder: Path) -> collections.Counter[str]:
    """Executions per file of `t.sleep` / `t.wait_file` tasks that each write "start" to their own file."""
    return collections.Counter({str(f): f.read_text().split().count("start") for f in folder.iterdir()})


@dataclass
class Tally:
    enqueued: int
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    executions: int = 0
    reruns: int = 0  # executions beyond one per task
    worker_lost: int = 0  # task_attempts rows with reason WorkerLost
    never_ran: int = 0  # tasks that succeeded without an execution on record
    duplicated_ids: list[int] = field(default_factory=list)  # tasks behind `duplicated`, to look at

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "duplicated_ids"}

    def __add__(self, other: Tally) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


_ROWS = """
SELECT t.id, t.args, t.state::text AS state, t.attempts,
       count(a.task_id) FILTER (WHERE a.reason = 'WorkerLost') AS worker_lost,
       count(a.task_id) FILTER (WHERE a.reason IN ('WorkerLost', 'Retrying')
                                  AND a.attempt < t.attempts) AS reran
FROM kubetasks.tasks t LEFT JOIN kubetasks.task_attempts a ON a.task_id = t.id
WHERE t.actor = ANY(%(actors)s)
GROUP BY t.id
"""


def tally(conn: db.Conn, actors: Sequence[str], enqueued: int, runs: Mapping[str, int], key: Key) -> Tally:
    """Compare the executions in `runs` (per key) with the tasks of `actors`; several tasks may share a key
    (the runs of one schedule), their attempts then explain the key's executions together."""
    result = Tally(enqueued=enqueued, executions=sum(runs.values()))
    explained: collections.Counter[str] = collections.Counter()
    tasks_of: collections.Counter[str] = collections.Counter()
    ids_of: dict[str, list[int]] = collections.defaultdict(list)
    succeeded_keys: set[str] = set()
    final = 0
    for row in conn.execute(_ROWS, {"actors": list(actors)}):
        name = key(row["args"])
        tasks_of[name] += 1
        ids_of[name].append(row["id"])
        # A task's executions are its final attempt plus every attempt recorded as lost or retried,
        # and never more than the attempts it was claimed for.
        explained[name] += min(row["attempts"], 1 + row["reran"])
        result.worker_lost += row["worker_lost"]
        if row["state"] in protocol.FINAL_STATES:
            final += 1
        if row["state"] in ("successful", "warning"):
            result.succeeded += 1
            succeeded_keys.add(name)
        elif row["state"] in ("error", "cancelled"):
            result.failed += 1
    result.lost = enqueued - final
    over = {name: count - explained[name] for name, count in runs.items() if count > explained[name]}
    result.duplicated = sum(over.values())
    result.duplicated_ids = sorted(i for name in over for i in ids_of[name])
    result.reruns = sum(max(0, count - tasks_of[name]) for name, count in runs.items())
    result.never_ran = sum(1 for name in succeeded_keys if runs.get(name, 0) == 0)
    return result


def unfinished(conn: db.Conn, actors: Sequence[str] | None = None) -> int:
    """Tasks (of `actors`, or all) not yet in a final state."""
    row = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE state IN ('queued', 'running')"
                       " AND (%(actors)s::text[] IS NULL OR actor = ANY(%(actors)s))",
                       {"actors": list(actors) if actors is not None else None}).fetchone()
    assert row is not None
    return int(row["n"])


def finished(conn: db.Conn, actors: Sequence[str] | None = None) -> int:
    """Tasks (of `actors`, or all) in a final state."""
    row = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE state NOT IN ('queued', 'running')"
                       " AND (%(actors)s::text[] IS NULL OR actor = ANY(%(actors)s))",
                       {"actors": list(actors) if actors is not None else None}).fetchone()
    assert row is not None
    return int(row["n"])


def executing(conn: db.Conn, worker: str | None = None) -> int:
    """Attempts claimed now (by `worker`, or by anyone): rows that have a worker."""
    row = conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE worker IS NOT NULL"
                       " AND (%(worker)s::text IS NULL OR worker = %(worker)s)", {"worker": worker}).fetchone()
    assert row is not None
    return int(row["n"])


def explain(conn: db.Conn, task_ids: Sequence[int]) -> str:
    """The rows of some tasks and of their attempts, for an assertion message."""
    lines = []
    for row in conn.execute("SELECT id, state::text, reason, attempts, worker, error FROM kubetasks.tasks"
                            " WHERE id = ANY(%s) ORDER BY id", (list(task_ids),)):
        lines.append(f"task {row}")
        lines += [f"  attempt {a}" for a in conn.execute(
            "SELECT attempt, state::text, reason, worker, started_at, finished_at, error"
            " FROM kubetasks.task_attempts WHERE task_id = %s ORDER BY attempt", (row["id"],))]
    return "\n".join(lines)
