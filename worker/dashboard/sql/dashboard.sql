-- Queries of the dashboard, one named block each: "-- name: why". The task list's WHERE clause is composed in
-- tasks.py from the filters; everything else is here. None of them counts the whole table.

-- live_counts: queued and running tasks by actor and state. `finished_at IS NULL` says the same as the state
-- (the table's CHECK) in the words of the partial index tasks_unfinished, so only live rows are read.
SELECT actor, state::text AS state, count(*) AS count
FROM kubetasks.tasks WHERE finished_at IS NULL AND state IN ('queued', 'running')
GROUP BY actor, state ORDER BY actor, state;

-- finished_counts: tasks finished since a time, by actor and state (range scan of tasks_finished).
SELECT actor, state::text AS state, count(*) AS count
FROM kubetasks.tasks WHERE finished_at >= %(since)s
GROUP BY actor, state ORDER BY actor, state;

-- throughput: finished tasks per minute since a time, split into ok and failed (error, cancelled).
SELECT date_trunc('minute', finished_at) AS minute,
       count(*) FILTER (WHERE state IN ('successful', 'warning')) AS ok,
       count(*) FILTER (WHERE state IN ('error', 'cancelled')) AS failed
FROM kubetasks.tasks WHERE finished_at >= %(since)s
GROUP BY 1 ORDER BY 1;

-- table_estimate: the planner's row estimate of the tasks table (no scan).
SELECT greatest(reltuples, 0)::bigint AS estimate FROM pg_class WHERE oid = 'kubetasks.tasks'::regclass;

-- task_namespaces: namespaces that hold tasks or schedules, by a loose scan of tasks_by_namespace (one index
-- probe per namespace, however many tasks each has) plus the schedules table.
WITH RECURSIVE ns AS (
    (SELECT kubetasks.task_namespace(schedule_name, object_ref) AS name FROM kubetasks.tasks
     WHERE (schedule_name IS NOT NULL OR object_ref IS NOT NULL)
       AND kubetasks.task_namespace(schedule_name, object_ref) IS NOT NULL
     ORDER BY 1 LIMIT 1)
    UNION ALL
    SELECT (SELECT kubetasks.task_namespace(t.schedule_name, t.object_ref) FROM kubetasks.tasks t
            WHERE (t.schedule_name IS NOT NULL OR t.object_ref IS NOT NULL)
              AND kubetasks.task_namespace(t.schedule_name, t.object_ref) > ns.name
            ORDER BY 1 LIMIT 1)
    FROM ns WHERE ns.name IS NOT NULL
)
SELECT name FROM ns WHERE name IS NOT NULL
UNION
SELECT split_part(name, '/', 1) FROM kubetasks.schedules
ORDER BY 1;

-- task_set_description: the description given in the task manager.
UPDATE kubetasks.tasks SET description = %(description)s WHERE id = %(id)s;

-- tasks_retry_many: queue finished tasks again from scratch (the runbook's "retry all failed matching").
WITH retried AS (
    UPDATE kubetasks.tasks
    SET state = 'queued', reason = 'Queued', worker = NULL, attempts = 0, eta = now(), result = NULL,
        error = NULL, started_at = NULL, attempt_started_at = NULL, finished_at = NULL, updated_at = now()
    WHERE id = ANY(%(ids)s::bigint[]) AND state NOT IN ('queued', 'running')
    RETURNING id, queue
), woken AS (
    SELECT pg_notify('kubetasks', queue || ':' || min(id)) FROM retried GROUP BY queue
)
SELECT count(*) AS retried, (SELECT count(*) FROM woken) AS queues FROM retried;
