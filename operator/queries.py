"""The operator's SQL, one named constant each with a line of why.

They are kept in Python rather than a `.sql` file because the package data of `kubetasks.operator` is not
declared in pyproject.toml; the style is the same as `worker/sql/*.sql`: read one file to review them all.
"""

from __future__ import annotations

from typing import Final, LiteralString

# lock_key: serialise "look for a row, insert it if missing" per key across operator replicas.
LOCK_KEY: Final[LiteralString] = "SELECT pg_advisory_xact_lock(%(lock_class)s, hashtext(%(key)s))"

# task_by_ref: the task a TaskRun (or a trigger) created before, if any; oldest first so re-deliveries agree.
TASK_BY_REF: Final[LiteralString] = """
SELECT * FROM kubetasks.tasks WHERE object_ref = %(ref)s ORDER BY id LIMIT 1"""

# task_mark_ref: remember which trigger value created a run, so the same value never fires twice.
TASK_MARK_REF: Final[LiteralString] = "UPDATE kubetasks.tasks SET object_ref = %(ref)s WHERE id = %(id)s"

# The columns a TaskRun status shows, plus what routes a row to its TaskRun and the latest attempt's log.
_VIEW: Final[LiteralString] = """
SELECT t.id, t.state::text AS state, t.reason, t.attempts, t.max_retries, t.eta, t.worker, t.error,
       t.started_at, t.finished_at, t.updated_at, t.created_at, t.object_ref, t.schedule_name, t.queue,
       t.actor, t.args, t.time_limit, t.priority, s.source AS schedule_source, a.log
FROM kubetasks.tasks t
LEFT JOIN kubetasks.schedules s ON s.name = t.schedule_name
LEFT JOIN LATERAL (
    SELECT log FROM kubetasks.task_attempts a WHERE a.task_id = t.id ORDER BY a.attempt DESC LIMIT 1
) a ON true"""

# task_views: the rows a burst of notifications named.
TASK_VIEWS: Final[LiteralString] = _VIEW + """
WHERE t.id = ANY(%(ids)s::bigint[])"""

# tasks_changed_since: the resync's safety net; rows mirrored onto custom resources changed since a cursor.
TASKS_CHANGED_SINCE: Final[LiteralString] = _VIEW + """
WHERE t.updated_at >= %(since)s AND (t.object_ref IS NOT NULL OR t.schedule_name IS NOT NULL)
  AND (t.object_ref LIKE 'taskrun/%%' OR s.source = 'operator')
ORDER BY t.updated_at
LIMIT %(limit)s"""

# schedule_tasks_after: runs of operator-managed schedules inserted after a cursor (they need a TaskRun).
SCHEDULE_TASKS_AFTER: Final[LiteralString] = _VIEW + """
WHERE t.id > %(after)s AND t.schedule_name IS NOT NULL AND s.source = 'operator'
ORDER BY t.id
LIMIT %(limit)s"""

# max_task_id: where the new-run cursor starts (older runs are reconciled per Schedule).
MAX_TASK_ID: Final[LiteralString] = "SELECT coalesce(max(id), 0) AS id FROM kubetasks.tasks"

# schedule_kept_runs: the runs a Schedule shows as TaskRuns: every live one plus the newest N successful
# and M failed or cancelled ones (the history limits); the rest are pruned.
SCHEDULE_KEPT_RUNS: Final[LiteralString] = """
WITH ranked AS (
    SELECT t.id, CASE WHEN t.state IN ('queued', 'running') THEN 0
                      WHEN t.state IN ('successful', 'warning') THEN 1 ELSE 2 END AS bucket
    FROM kubetasks.tasks t
    WHERE t.schedule_name = %(name)s
), numbered AS (
    SELECT id, bucket, row_number() OVER (PARTITION BY bucket ORDER BY id DESC) AS n FROM ranked
)
""" + _VIEW + """
JOIN numbered k ON k.id = t.id
WHERE k.bucket = 0 OR (k.bucket = 1 AND k.n <= %(keep_successful)s) OR (k.bucket = 2 AND k.n <= %(keep_failed)s)
ORDER BY t.id"""

# schedule_latest_runs: the newest run and the newest finished run of a schedule (status summary).
SCHEDULE_LATEST_RUNS: Final[LiteralString] = """
SELECT
    (SELECT row_to_json(x) FROM (
        SELECT id, state::text AS state FROM kubetasks.tasks
        WHERE schedule_name = %(name)s ORDER BY id DESC LIMIT 1) x) AS newest,
    (SELECT row_to_json(x) FROM (
        SELECT id, state::text AS state, reason, error FROM kubetasks.tasks
        WHERE schedule_name = %(name)s AND state NOT IN ('queued', 'running') ORDER BY id DESC LIMIT 1) x)
        AS finished"""

# pool_load: what a WorkerPool's queues need now: runnable tasks (due, no worker) and tasks in flight.
# Tasks due later, including retries waiting out their backoff, need no worker yet and are not counted.
POOL_LOAD: Final[LiteralString] = """
SELECT count(*) FILTER (WHERE worker IS NULL AND eta <= now()) AS runnable,
       count(*) FILTER (WHERE worker IS NOT NULL) AS running
FROM kubetasks.tasks
WHERE state IN ('queued', 'running') AND queue = ANY(%(queues)s::text[])"""
