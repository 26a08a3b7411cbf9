-- Queries on kubetasks.tasks, one named block each: "-- name: why".
-- Advisory locks use the two-key form: {lock:worker} (protocol.WORKER_LOCK), key = the worker session's number,
-- held by a worker's claiming connection while it lives; {lock:attempt} (protocol.ATTEMPT_LOCK), key = the task
-- id's low 31 bits, held per attempt by workers before schema 6.

-- task_insert: enqueue one task; with a dedup key, return the live task that already holds it.
WITH inserted AS (
    INSERT INTO kubetasks.tasks (queue, actor, args, priority, eta, max_retries, time_limit, retry_backoff,
                                 schedule_name, schedule_tick, object_ref, dedup_key, notify, traceparent)
    VALUES (%(queue)s, %(actor)s, %(args)s, %(priority)s, coalesce(%(eta)s, now()), %(max_retries)s,
            %(time_limit)s, %(retry_backoff)s, %(schedule_name)s, %(schedule_tick)s, %(object_ref)s, %(dedup_key)s,
            %(notify)s, %(traceparent)s)
    ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running') DO NOTHING
    RETURNING *, true AS created
)
SELECT * FROM inserted
UNION ALL
SELECT *, false AS created FROM kubetasks.tasks
WHERE dedup_key = %(dedup_key)s AND state IN ('queued', 'running') AND NOT EXISTS (SELECT FROM inserted);

-- task_copy_in: bulk enqueue (enqueue_many) by COPY; rows are written in exactly this column order.
COPY kubetasks.tasks (queue, actor, args, priority, max_retries, time_limit, notify, traceparent) FROM STDIN;

-- task_get: one task by id.
SELECT * FROM kubetasks.tasks WHERE id = %(id)s;

-- task_claim: take up to `limit` runnable tasks of one queue for this worker, highest priority and oldest first.
-- Row locks (SKIP LOCKED) keep claimers apart. Run only on the connection holding the session's {lock:worker}:
-- the session number written here is what marks the attempts alive for as long as that connection lives,
-- which is how a dead worker's tasks are recognised (one lock per worker, none per task).
-- The columns come in the order of the worker's Job fields (it reads them as tuples). The last one is NULL
-- unless the task was enqueued with tracing on: then '<queue> <traceparent>', for the attempt's span.
WITH candidates AS MATERIALIZED (
    SELECT id FROM kubetasks.tasks
    WHERE worker IS NULL AND state IN ('queued', 'running') AND queue = %(queue)s AND eta <= now()
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    -- By ids through the primary key: as a join, the planner hashes a sequential scan of the whole table
    -- whenever it guesses that cheaper (tens of thousands of rows), a scan of every row version per claim.
    UPDATE kubetasks.tasks t
    SET state = 'running', reason = 'Running', worker = %(worker)s, session = %(session)s,
        attempts = t.attempts + 1, started_at = coalesce(t.started_at, now()), attempt_started_at = now(),
        updated_at = now()
    WHERE t.id = ANY(ARRAY(SELECT id FROM candidates))
    RETURNING t.id, t.actor, t.args, t.attempts, t.max_retries, t.time_limit, t.attempt_started_at,
              t.retry_backoff, CASE WHEN t.traceparent IS NOT NULL THEN t.queue || ' ' || t.traceparent END AS trace,
              t.priority
)
SELECT id, actor, args, attempts, max_retries, time_limit, attempt_started_at, retry_backoff, trace
FROM claimed ORDER BY priority DESC, id;

-- task_finish_many: record the outcome of many attempts of this worker, only those it still owns in this
-- session (an attempt given up after a reconnection may still name the old one until a rescuer takes it).
-- A state of 'running' means "retry at eta": the task stays running, without a worker, until then.
UPDATE kubetasks.tasks t
SET state = o.state, reason = o.reason, result = o.result, error = o.error, worker = NULL, session = NULL,
    eta = coalesce(o.eta, t.eta), updated_at = now(),
    finished_at = CASE WHEN o.state IN ('queued', 'running') THEN NULL ELSE now() END
FROM unnest(%(ids)s::bigint[], %(states)s::kubetasks.task_state[], %(reasons)s::text[],
            %(results)s::jsonb[], %(errors)s::text[], %(etas)s::timestamptz[])
     AS o(id, state, reason, result, error, eta)
WHERE t.id = o.id AND t.worker = %(worker)s AND t.session = %(session)s;

-- task_finish_plain: the common case of task_finish_many, by ids alone: attempts of this session that ended in
-- one final state and reason with nothing else to keep (no result, error or eta), the same for all of them.
-- The ids go in binary format: a quarter of the client's cost of dumping them as text.
UPDATE kubetasks.tasks
SET state = %(state)s::kubetasks.task_state, reason = %(reason)s, result = NULL, error = NULL, worker = NULL,
    session = NULL, updated_at = now(), finished_at = now()
WHERE id = ANY(%(ids)b::bigint[]) AND worker = %(worker)s AND session = %(session)s;

-- worker_session_start: draw a session number and take its lock on this connection; no row when the number
-- is held (only after the sequence wrapped around onto a live session): draw again.
SELECT session FROM nextval('kubetasks.worker_sessions') AS n(session)
WHERE pg_try_advisory_lock({lock:worker}, session::int);

-- worker_session_resume: after a reconnection, take back the lock of the session the attempts in flight were
-- claimed in; false while a rescuer holds it (it is taking them back) or the old connection still lives.
SELECT pg_try_advisory_lock({lock:worker}, %(session)s) AS resumed;

-- attempt_owned: of the attempts in flight here, those still this session's (a rescuer may have taken the rest).
SELECT id FROM kubetasks.tasks
WHERE id = ANY(%(ids)s::bigint[]) AND worker = %(worker)s AND session = %(session)s;

-- attempt_insert_many: keep the log and error of finished attempts that have something to tell.
INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, worker, started_at, error, log)
SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(states)s::kubetasks.task_state[],
                     %(reasons)s::text[], %(worker)s::text[], %(started)s::timestamptz[],
                     %(errors)s::text[], %(logs)s::text[])
ON CONFLICT (task_id, attempt) DO UPDATE
SET state = EXCLUDED.state, reason = EXCLUDED.reason, error = EXCLUDED.error, log = EXCLUDED.log,
    finished_at = EXCLUDED.finished_at;

-- task_rescue: running tasks whose worker session no longer holds its lock (process killed, connection lost):
-- retry them after a backoff while retries remain, else fail them. The transaction-level lock taken on each
-- dead session proves nobody holds it, and keeps its worker from resuming it until commit. Attempts of workers
-- before schema 6 (no session) are judged by their per-attempt lock, and every attempt's lock is tried too, so
-- an attempt an older worker claimed on a row still naming a dead session is not taken from it.
WITH sessions AS MATERIALIZED (
    SELECT DISTINCT session FROM kubetasks.tasks
    WHERE worker IS NOT NULL AND session IS NOT NULL
), dead AS MATERIALIZED (
    SELECT session FROM sessions WHERE pg_try_advisory_xact_lock({lock:worker}, session)
), suspects AS MATERIALIZED (
    SELECT t.id FROM kubetasks.tasks t
    WHERE t.worker IS NOT NULL AND t.attempt_started_at < now() - make_interval(secs => %(grace)s)
      AND (t.session IN (SELECT session FROM dead) OR (t.session IS NULL AND NOT EXISTS (
            SELECT FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.classid = {lock:attempt} AND l.objsubid = 2
              AND l.objid::bigint = (t.id & 2147483647))))
    ORDER BY t.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), lost AS MATERIALIZED (
    SELECT id FROM suspects WHERE pg_try_advisory_xact_lock({lock:attempt}, (id & 2147483647)::int)
), rescued AS (
    UPDATE kubetasks.tasks t
    SET worker = NULL, session = NULL, reason = 'WorkerLost', updated_at = now(),
        error = 'worker ' || t.worker || ' was lost during attempt ' || t.attempts,
        state = CASE WHEN t.attempts <= t.max_retries THEN 'running' ELSE 'error' END::kubetasks.task_state,
        finished_at = CASE WHEN t.attempts <= t.max_retries THEN NULL ELSE now() END,
        eta = now() + least(make_interval(secs => coalesce(t.retry_backoff, %(backoff_base)s) * 2 ^ (t.attempts - 1)),
                            make_interval(secs => %(backoff_max)s))
    FROM lost WHERE t.id = lost.id
    RETURNING t.id, t.attempts, t.state, t.error, t.attempt_started_at, t.queue
), logged AS (
    INSERT INTO kubetasks.task_attempts (task_id, attempt, state, reason, started_at, error)
    SELECT id, attempts, state, 'WorkerLost', attempt_started_at, error FROM rescued
    ON CONFLICT (task_id, attempt) DO NOTHING
)
SELECT id, attempts, state FROM rescued;

-- queue_count_tasks: queue depth (runnable now, delayed) and tasks in flight, per queue; `finished_at IS NULL`
-- (the same rows, by the tasks_finished_iff_final check) reads through tasks_unfinished, not the whole table.
SELECT queue,
       count(*) FILTER (WHERE worker IS NULL AND eta <= now()) AS runnable,
       count(*) FILTER (WHERE worker IS NULL AND eta > now()) AS delayed,
       count(*) FILTER (WHERE worker IS NOT NULL) AS executing
FROM kubetasks.tasks
WHERE finished_at IS NULL AND state IN ('queued', 'running')
GROUP BY queue ORDER BY queue;

-- task_stats: counts by state and actor, for `kubetasks tasks stats` and the metrics.
SELECT actor, state::text AS state, count(*) AS count FROM kubetasks.tasks GROUP BY actor, state ORDER BY actor, state;

-- task_retry: run a finished task again from scratch, with a fresh retry budget.
UPDATE kubetasks.tasks
SET state = 'queued', reason = 'Queued', worker = NULL, attempts = 0, eta = now(), result = NULL,
    error = NULL, started_at = NULL, attempt_started_at = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s AND state NOT IN ('queued', 'running')
RETURNING *;

-- queue_notify: wake a queue's workers for a task the insert trigger does not announce (a retry is an UPDATE).
SELECT pg_notify(%(channel)s, %(payload)s);

-- task_cancel: cancel a task that has not finished; the worker running it is told on channel kubetasks_cancel.
WITH cancelled AS (
    UPDATE kubetasks.tasks
    SET state = 'cancelled', reason = 'Cancelled', worker = NULL, finished_at = now(), updated_at = now(),
        error = coalesce(%(message)s, 'cancelled')
    WHERE id = %(id)s AND state IN ('queued', 'running')
    RETURNING *
)
SELECT cancelled.* FROM cancelled
CROSS JOIN LATERAL (SELECT pg_notify('kubetasks_cancel', cancelled.id::text)) AS told;

-- task_purge_batch: delete one batch of finished tasks older than the cutoff (short transactions, no bloat spike).
WITH doomed AS (
    SELECT id FROM kubetasks.tasks
    WHERE finished_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY finished_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM kubetasks.tasks t USING doomed WHERE t.id = doomed.id;

-- attempt_list: the per-attempt log, oldest first.
SELECT * FROM kubetasks.task_attempts WHERE task_id = %(id)s ORDER BY attempt;

-- task_list: a page of tasks, newest first. {filters} is composed from a TaskFilter in queue.py (only the
-- conditions asked for, so each query keeps the plan of its index) and may end with the keyset `id < before_id`.
SELECT * FROM kubetasks.tasks WHERE {filters} ORDER BY id DESC LIMIT %(limit)s;

-- task_list_merge: the branches of one task list (each a task_list of its own, see queue.list_statement) merged
-- newest first.
SELECT * FROM ({branches}) AS page ORDER BY id DESC LIMIT %(limit)s;

-- task_delete_matching: delete the tasks matching {filters} (a TaskFilter), unfinished ones only when asked.
DELETE FROM kubetasks.tasks WHERE {filters} AND (%(include_unfinished)s OR state NOT IN ('queued', 'running'));

-- queue_flush: drop the tasks waiting in a queue that never started; running ones finish normally.
DELETE FROM kubetasks.tasks WHERE queue = %(queue)s AND state = 'queued' AND worker IS NULL;
