-- The operator's queries on the runs of operator-managed schedules, one named block each: "-- name: why".
-- schedule_tasks_after and schedule_kept_runs select the same columns as task_views (see tasks.sql).

-- schedule_tasks_after: runs of operator-managed schedules inserted after a cursor (they need a TaskRun).
SELECT t.id, t.state::text AS state, t.reason, t.attempts, t.max_retries, t.eta, t.worker, t.error,
       t.started_at, t.finished_at, t.updated_at, t.created_at, t.object_ref, t.schedule_name, t.queue,
       t.actor, t.args, t.time_limit, t.priority, s.source AS schedule_source, a.log,
       w.id AS workflow_id, w.state::text AS workflow_state, w.reason AS workflow_reason,
       w.steps AS workflow_steps
FROM kubetasks.tasks t
LEFT JOIN kubetasks.schedules s ON s.name = t.schedule_name
LEFT JOIN LATERAL (
    SELECT p.id, p.state, p.reason, kubetasks.workflow_progress(p.id) AS steps FROM kubetasks.tasks p
    WHERE p.actor = 'kubetasks.workflow' AND p.id = CASE WHEN t.actor = 'kubetasks.workflow' THEN t.id ELSE (
        SELECT sp.workflow_id FROM kubetasks.workflow_spawns sp
        WHERE sp.task_id = t.id AND sp.workflow_id IS DISTINCT FROM t.parent_id ORDER BY sp.seq DESC LIMIT 1) END
    LIMIT 1  -- kept a per-row look-up by id: flattened into a join, it would aggregate every workflow's steps
) w ON true
LEFT JOIN LATERAL (
    SELECT log FROM kubetasks.task_attempts a WHERE a.task_id = t.id ORDER BY a.attempt DESC LIMIT 1
) a ON true
WHERE t.id > %(after)s AND t.schedule_name IS NOT NULL AND s.source = 'operator'
ORDER BY t.id
LIMIT %(limit)s;

-- schedule_kept_runs: the runs a Schedule shows as TaskRuns: every live one plus the newest N successful
-- and M failed or cancelled ones (the history limits); the rest are pruned.
WITH ranked AS (
    SELECT t.id, CASE WHEN t.state IN ('queued', 'running') THEN 0
                      WHEN t.state IN ('successful', 'warning') THEN 1 ELSE 2 END AS bucket
    FROM kubetasks.tasks t
    WHERE t.schedule_name = %(name)s
), numbered AS (
    SELECT id, bucket, row_number() OVER (PARTITION BY bucket ORDER BY id DESC) AS n FROM ranked
)
SELECT t.id, t.state::text AS state, t.reason, t.attempts, t.max_retries, t.eta, t.worker, t.error,
       t.started_at, t.finished_at, t.updated_at, t.created_at, t.object_ref, t.schedule_name, t.queue,
       t.actor, t.args, t.time_limit, t.priority, s.source AS schedule_source, a.log,
       w.id AS workflow_id, w.state::text AS workflow_state, w.reason AS workflow_reason,
       w.steps AS workflow_steps
FROM kubetasks.tasks t
LEFT JOIN kubetasks.schedules s ON s.name = t.schedule_name
LEFT JOIN LATERAL (
    SELECT p.id, p.state, p.reason, kubetasks.workflow_progress(p.id) AS steps FROM kubetasks.tasks p
    WHERE p.actor = 'kubetasks.workflow' AND p.id = CASE WHEN t.actor = 'kubetasks.workflow' THEN t.id ELSE (
        SELECT sp.workflow_id FROM kubetasks.workflow_spawns sp
        WHERE sp.task_id = t.id AND sp.workflow_id IS DISTINCT FROM t.parent_id ORDER BY sp.seq DESC LIMIT 1) END
    LIMIT 1  -- kept a per-row look-up by id: flattened into a join, it would aggregate every workflow's steps
) w ON true
LEFT JOIN LATERAL (
    SELECT log FROM kubetasks.task_attempts a WHERE a.task_id = t.id ORDER BY a.attempt DESC LIMIT 1
) a ON true
JOIN numbered k ON k.id = t.id
WHERE k.bucket = 0 OR (k.bucket = 1 AND k.n <= %(keep_successful)s) OR (k.bucket = 2 AND k.n <= %(keep_failed)s)
ORDER BY t.id;

-- schedule_latest_runs: the newest run and the newest finished run of a schedule (status summary).
SELECT
    (SELECT row_to_json(x) FROM (
        SELECT id, state::text AS state FROM kubetasks.tasks
        WHERE schedule_name = %(name)s ORDER BY id DESC LIMIT 1) x) AS newest,
    (SELECT row_to_json(x) FROM (
        SELECT id, state::text AS state, reason, error FROM kubetasks.tasks
        WHERE schedule_name = %(name)s AND state NOT IN ('queued', 'running') ORDER BY id DESC LIMIT 1) x)
        AS finished;

-- schedule_marks: the columns of every operator-managed schedule's row that its status is made of; the sweep
-- compares them between passes to find the Schedules whose status may have changed without a run saying so
-- (a tick skipped, a pause from the CLI, a row stored by another replica).
SELECT name, next_run, last_run, last_success, paused, updated_at
FROM kubetasks.schedules WHERE source = 'operator';
