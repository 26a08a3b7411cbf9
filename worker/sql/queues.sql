-- Queries on kubetasks.queues (the queue controls: pause, concurrency and rate limits), one named block each.
-- A queue without a row is unpaused and unlimited. Workers cache the rows of their queues (re-read on the
-- kubetasks_queue_control notification) and claim with task_claim unless a limit applies.

-- queue_control_list: every queue that has a control row, by name.
SELECT name, paused, concurrency_limit, concurrency_key, key_concurrency_limit, rate_limit, rate_period, updated_at
FROM kubetasks.queues ORDER BY name;

-- queue_control_get_many: the control rows of some queues (what a worker caches for the queues it consumes).
SELECT name, paused, concurrency_limit, concurrency_key, key_concurrency_limit, rate_limit, rate_period, updated_at
FROM kubetasks.queues WHERE name = ANY(%(names)s::text[]);

-- queue_control_pause: pause or resume a queue (a row is made for a queue that had none).
INSERT INTO kubetasks.queues AS q (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
RETURNING name, paused, concurrency_limit, concurrency_key, key_concurrency_limit, rate_limit, rate_period, updated_at;

-- queue_control_set_limits: replace a queue's limits; a changed rate starts with an empty token bucket.
INSERT INTO kubetasks.queues AS q (name, concurrency_limit, concurrency_key, key_concurrency_limit, rate_limit,
                                   rate_period)
VALUES (%(name)s, %(concurrency_limit)s, %(concurrency_key)s, %(key_concurrency_limit)s, %(rate_limit)s,
        %(rate_period)s)
ON CONFLICT (name) DO UPDATE
SET concurrency_limit = EXCLUDED.concurrency_limit, concurrency_key = EXCLUDED.concurrency_key,
    key_concurrency_limit = EXCLUDED.key_concurrency_limit, rate_limit = EXCLUDED.rate_limit,
    rate_period = EXCLUDED.rate_period, updated_at = now(),
    rate_tokens = CASE WHEN (q.rate_limit, q.rate_period) IS DISTINCT FROM (EXCLUDED.rate_limit, EXCLUDED.rate_period)
                       THEN 0 ELSE q.rate_tokens END,
    rate_refilled_at = CASE WHEN (q.rate_limit, q.rate_period) IS DISTINCT FROM (EXCLUDED.rate_limit, EXCLUDED.rate_period)
                            THEN now() ELSE q.rate_refilled_at END
RETURNING name, paused, concurrency_limit, concurrency_key, key_concurrency_limit, rate_limit, rate_period, updated_at;

-- queue_control_lock: first statement of a limited claim's transaction; serialises the queue's limited claims.
SELECT paused FROM kubetasks.queues WHERE name = %(queue)s FOR UPDATE;

-- task_claim_limited: task_claim for a queue with limits, run after queue_control_lock in the same transaction.
-- Under that row lock no other limited claim of the queue runs, and this statement's snapshot (taken after the
-- lock) sees every claim committed before it, so the running counts below are exact. It claims at most: the
-- free slots under concurrency_limit, the whole tokens of the rate bucket, and per value of the concurrency key
-- the slots that key has left, among the first %(scan)s runnable tasks; a task whose args lack the key counts
-- towards the queue's limits only. The spent tokens are written back to the row. The final UPDATE, which marks
-- the attempts alive, is task_claim's word for word (tests/unit/test_sql_files.py keeps it so).
-- The bucket is refilled up to the transaction's start, now(), which is what the claimed attempts are stamped
-- with (attempt_started_at): however long the lock took, no start is stamped before the token it spends.
WITH control AS MATERIALIZED (
    SELECT q.name, q.concurrency_limit, q.concurrency_key, q.key_concurrency_limit, q.rate_limit,
           greatest(q.rate_refilled_at, now()) AS at,
           least(q.rate_limit, q.rate_tokens + q.rate_limit / q.rate_period
                 * greatest(0, extract(epoch FROM now() - q.rate_refilled_at))::float8) AS tokens
    FROM kubetasks.queues q WHERE q.name = %(queue)s AND NOT q.paused
), running AS MATERIALIZED (
    SELECT t.args ->> c.concurrency_key AS key, count(*) AS n
    FROM control c JOIN kubetasks.tasks t ON t.queue = c.name AND t.worker IS NOT NULL
    GROUP BY 1
), budget AS MATERIALIZED (
    SELECT greatest(0, least(%(limit)s,
                             c.concurrency_limit - (SELECT coalesce(sum(n), 0) FROM running),
                             floor(c.tokens)))::int AS n,
           c.concurrency_key, c.key_concurrency_limit
    FROM control c
), waiting AS MATERIALIZED (
    SELECT t.id, t.priority, t.args ->> b.concurrency_key AS key
    FROM budget b JOIN kubetasks.tasks t
      ON t.worker IS NULL AND t.state IN ('queued', 'running') AND t.queue = %(queue)s AND t.eta <= now()
    WHERE b.n > 0
    ORDER BY t.priority DESC, t.id
    LIMIT %(scan)s
), picked AS MATERIALIZED (
    SELECT w.id
    FROM (SELECT w.*, row_number() OVER (PARTITION BY w.key ORDER BY w.priority DESC, w.id) AS nth
          FROM waiting w) AS w
    CROSS JOIN budget b
    LEFT JOIN running r ON r.key = w.key
    WHERE b.key_concurrency_limit IS NULL OR w.key IS NULL OR w.nth + coalesce(r.n, 0) <= b.key_concurrency_limit
    ORDER BY w.priority DESC, w.id
    LIMIT (SELECT n FROM budget)
), candidates AS MATERIALIZED (
    SELECT t.id FROM kubetasks.tasks t  -- by ids, not a join: see task_claim's `claimed`
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked)) AND t.worker IS NULL AND t.state IN ('queued', 'running')
    FOR UPDATE SKIP LOCKED
), spent AS (
    UPDATE kubetasks.queues q SET rate_tokens = c.tokens - (SELECT count(*) FROM candidates), rate_refilled_at = c.at
    FROM control c WHERE q.name = c.name AND c.rate_limit IS NOT NULL
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

-- queue_list_startable: per queue (of %(queues)s, or all when NULL), tasks runnable now, running, and how many
-- of the runnable could start now under its controls (all of them without a row; none while paused). The rest
-- are held by a limit: what the metrics report and what the WorkerPool's formula leaves out. A rate limit lets at
-- most rate_limit tasks start per period, so at most that many count. Per-key slots are summed over the keys of
-- the runnable tasks (tasks without the key are not limited per key).
WITH live AS MATERIALIZED (
    SELECT t.queue, t.worker IS NOT NULL AS busy, t.args ->> q.concurrency_key AS key,
           q.name IS NOT NULL AS controlled
    FROM kubetasks.tasks t LEFT JOIN kubetasks.queues q ON q.name = t.queue
    WHERE t.finished_at IS NULL AND t.state IN ('queued', 'running')
      AND (t.worker IS NOT NULL OR t.eta <= now())
      AND (%(queues)s::text[] IS NULL OR t.queue = ANY(%(queues)s::text[]))
), per_key AS (
    SELECT l.queue, l.key, count(*) FILTER (WHERE NOT l.busy) AS runnable, count(*) FILTER (WHERE l.busy) AS running
    FROM live l WHERE l.controlled GROUP BY l.queue, l.key
), keyed AS (
    SELECT k.queue,
           sum(CASE WHEN k.key IS NULL OR q.key_concurrency_limit IS NULL THEN k.runnable
                    ELSE least(k.runnable, greatest(0, q.key_concurrency_limit - k.running)) END) AS key_startable
    FROM per_key k JOIN kubetasks.queues q ON q.name = k.queue
    GROUP BY k.queue
), totals AS (
    SELECT l.queue, count(*) FILTER (WHERE NOT l.busy) AS runnable, count(*) FILTER (WHERE l.busy) AS running
    FROM live l GROUP BY l.queue
)
SELECT t.queue, t.runnable, t.running,
       CASE WHEN q.name IS NULL THEN t.runnable
            WHEN q.paused THEN 0
            -- least() skips NULLs: a limit that is not set does not count
            ELSE greatest(0, least(t.runnable, k.key_startable, q.concurrency_limit - t.running, q.rate_limit))
       END::bigint AS startable,
       coalesce(q.paused, false) AS paused
FROM totals t LEFT JOIN kubetasks.queues q ON q.name = t.queue LEFT JOIN keyed k ON k.queue = t.queue
ORDER BY t.queue;

-- queue_has_runnable: after a limited claim that got fewer than asked, in its transaction: are tasks held back?
SELECT 1 AS held FROM kubetasks.tasks
WHERE worker IS NULL AND state IN ('queued', 'running') AND queue = %(queue)s AND eta <= now()
LIMIT 1;
