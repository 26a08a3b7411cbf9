-- The operator's queries on kubetasks.tasks, one named block each: "-- name: why".
-- The operator's advisory locks are transaction-level, two-key: class {lock:operator} (protocol.OPERATOR_LOCK),
-- key = hashtext of an object_ref.
-- The four *_view queries (task_views, tasks_changed_since, and schedule_tasks_after and schedule_kept_runs in
-- schedules.sql) select the same columns: what a TaskRun status shows, plus what routes a row to its TaskRun
-- and the latest attempt's log. tests/unit/test_operator_sql.py keeps their column lists identical.
-- They also carry the step progress of the row's workflow: the row's own when it is a workflow parent, else
-- the one its actor started last (workflow_spawns; a spawn into the task's own workflow is not a start). One
-- aggregate over that workflow's step rows per row read, never a read of its children.

-- lock_key: serialise "look for a row, insert it if missing" per key across operator replicas.
SELECT pg_advisory_xact_lock({lock:operator}, hashtext(%(key)s));

-- task_by_ref: the task a TaskRun (or a trigger) created before, if any; oldest first so re-deliveries agree.
SELECT * FROM kubetasks.tasks WHERE object_ref = %(ref)s ORDER BY id LIMIT 1;

-- task_mark_ref: remember which trigger value created a run, so the same value never fires twice.
UPDATE kubetasks.tasks SET object_ref = %(ref)s WHERE id = %(id)s;

-- task_views: the rows a burst of notifications named.
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
WHERE t.id = ANY(%(ids)s::bigint[]);

-- tasks_changed_since: the resync's safety net; rows mirrored onto custom resources changed since a cursor.
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
WHERE t.updated_at >= %(since)s AND (t.object_ref IS NOT NULL OR t.schedule_name IS NOT NULL)
  AND (t.object_ref LIKE 'taskrun/%%' OR s.source = 'operator')
ORDER BY t.updated_at
LIMIT %(limit)s;

-- max_task_id: where the new-run cursor starts (older runs are reconciled per Schedule).
SELECT coalesce(max(id), 0) AS id FROM kubetasks.tasks;

-- database_now: the database's clock, where the resync cursor is read (row times are the database's too).
SELECT now() AS now;
