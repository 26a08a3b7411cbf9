-- Queries of workflows (groups, chains, callbacks, spawns), one named block each: "-- name: why".
-- The bookkeeping itself is in the database (migration 0005): a trigger counts each child's final state.

-- workflow_insert_parent: the parent task, running without a worker and never claimable (eta 9999-12-31, never due).
INSERT INTO kubetasks.tasks (queue, actor, args, state, reason, eta, max_retries, started_at,
                             schedule_name, schedule_tick, object_ref, parent_id, step)
VALUES (%(queue)s, 'kubetasks.workflow', %(args)s, 'running', 'Running', '9999-12-31 00:00:00+00', 0, now(),
        %(schedule_name)s, %(schedule_tick)s, %(object_ref)s, %(parent_id)s, %(step)s)
RETURNING id;

-- workflow_insert: the workflow's row; its steps follow.
INSERT INTO kubetasks.workflows (task_id, on_failure, callback, steps)
VALUES (%(id)s, %(on_failure)s, %(callback)s, %(steps)s);

-- workflow_step_insert_many: the steps, with their children's specification.
INSERT INTO kubetasks.workflow_steps (workflow_id, step, name, children)
SELECT %(id)s, s.step - 1, s.name, s.children
FROM unnest(%(names)s::text[], %(children)s::jsonb[]) WITH ORDINALITY AS s(name, children, step);

-- workflow_advance: start the first step (or move on past empty ones).
SELECT kubetasks.workflow_advance(%(id)s);

-- spawn_claim: the spawn number `seq` of a task, once: no row back means an earlier attempt made it.
INSERT INTO kubetasks.workflow_spawns (task_id, seq) VALUES (%(task_id)s, %(seq)s)
ON CONFLICT DO NOTHING RETURNING task_id;

-- spawn_get: what an earlier attempt's spawn made.
SELECT workflow_id, children FROM kubetasks.workflow_spawns WHERE task_id = %(task_id)s AND seq = %(seq)s;

-- spawn_record: what this spawn made.
UPDATE kubetasks.workflow_spawns SET workflow_id = %(workflow_id)s, children = %(children)s
WHERE task_id = %(task_id)s AND seq = %(seq)s;

-- spawn_place: the step a running task belongs to, locked so its counters take the new children first.
-- No row: the task is not a child of a running workflow (or no longer running itself).
SELECT s.workflow_id, s.step FROM kubetasks.tasks t
JOIN kubetasks.tasks p ON p.id = t.parent_id AND p.state = 'running'
JOIN kubetasks.workflow_steps s ON s.workflow_id = t.parent_id AND s.step = t.step
WHERE t.id = %(task_id)s AND t.state = 'running'
FOR NO KEY UPDATE OF s;

-- spawn_count: the spawned children join their sibling's step.
UPDATE kubetasks.workflow_steps SET total = total + %(n)s, pending = pending + %(n)s
WHERE workflow_id = %(workflow_id)s AND step = %(step)s;

-- spawn_copy_in: the spawned children by COPY; rows are written in exactly this column order.
COPY kubetasks.tasks (queue, actor, args, priority, max_retries, time_limit, retry_backoff, parent_id, step) FROM STDIN;

-- workflow_get: a workflow's row.
SELECT * FROM kubetasks.workflows WHERE task_id = %(id)s;

-- workflow_step_list: a workflow's steps with their counts.
SELECT step, name, total, pending, succeeded, warned, failed, cancelled, failed_child, started_at, finished_at
FROM kubetasks.workflow_steps WHERE workflow_id = %(id)s ORDER BY step;

-- workflow_child_list: a page of a workflow's children (of one step, or all), by step then id (tasks_children).
SELECT * FROM kubetasks.tasks WHERE parent_id = %(id)s AND (%(step)s::integer IS NULL OR step = %(step)s)
ORDER BY step, id LIMIT %(limit)s;

-- workflow_cancel: cancel a workflow and its unfinished children (NULL: it had already finished).
SELECT kubetasks.workflow_cancel(%(id)s, %(message)s) AS cancelled;

-- workflow_retry: re-run the failed children of the step where a workflow stopped (NULL: not retryable).
SELECT kubetasks.workflow_retry(%(id)s) AS requeued;

-- workflow_count_by_state: workflows (parent tasks) by state, for the metrics; live and finished ones apart, so
-- each half reads its index (tasks_unfinished, tasks_finished_by_actor) rather than the whole table.
SELECT state::text AS state, count(*) AS count FROM (
    SELECT state FROM kubetasks.tasks WHERE actor = 'kubetasks.workflow' AND finished_at IS NULL
    UNION ALL
    SELECT state FROM kubetasks.tasks WHERE actor = 'kubetasks.workflow' AND finished_at IS NOT NULL
) AS workflows
GROUP BY state ORDER BY state;
