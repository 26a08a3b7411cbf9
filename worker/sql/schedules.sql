-- Queries on kubetasks.schedules, one named block each: "-- name: why".
-- Times the scheduler decides on are passed in (`now`), so tests control the clock.

-- schedule_get: one schedule, with last_success also taken from its finished runs (the column alone lags).
SELECT s.*, greatest(s.last_success, ok.finished) AS last_success_at, live.n AS active_runs
FROM kubetasks.schedules s
CROSS JOIN LATERAL (
    SELECT max(t.finished_at) AS finished FROM kubetasks.tasks t
    WHERE t.schedule_name = s.name AND t.state IN ('successful', 'warning')) AS ok
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM kubetasks.tasks t
    WHERE t.schedule_name = s.name AND t.state IN ('queued', 'running')) AS live
WHERE s.name = %(name)s;

-- schedule_list: every schedule by name, with the same derived columns as schedule_get.
SELECT s.*, greatest(s.last_success, ok.finished) AS last_success_at, live.n AS active_runs
FROM kubetasks.schedules s
CROSS JOIN LATERAL (
    SELECT max(t.finished_at) AS finished FROM kubetasks.tasks t
    WHERE t.schedule_name = s.name AND t.state IN ('successful', 'warning')) AS ok
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM kubetasks.tasks t
    WHERE t.schedule_name = s.name AND t.state IN ('queued', 'running')) AS live
ORDER BY s.name;

-- schedule_lock: the stored row, locked until the end of the transaction (apply, pause, resume, trigger).
SELECT * FROM kubetasks.schedules WHERE name = %(name)s FOR UPDATE;

-- schedule_upsert: create or replace a schedule's spec; next_run is decided by the caller.
INSERT INTO kubetasks.schedules AS s (
    name, actor, args, queue, cron, time_zone, paused, concurrency_policy, missed_run_policy,
    starting_deadline_seconds, time_limit, max_retries, retry_backoff, priority, deduplicate,
    successful_runs_history_limit, failed_runs_history_limit, source, next_run, notify, catchup_window,
    catchup_max_runs, jitter, start_time, end_time, pause_after_failures, paused_reason)
VALUES (%(name)s, %(actor)s, %(args)s, %(queue)s, %(cron)s, %(time_zone)s, %(paused)s, %(concurrency_policy)s,
        %(missed_run_policy)s, %(starting_deadline_seconds)s, %(time_limit)s, %(max_retries)s, %(retry_backoff)s,
        %(priority)s, %(deduplicate)s, %(successful_runs_history_limit)s, %(failed_runs_history_limit)s,
        %(source)s, %(next_run)s, %(notify)s, %(catchup_window)s, %(catchup_max_runs)s, %(jitter)s,
        %(start_time)s, %(end_time)s, %(pause_after_failures)s, %(paused_reason)s)
ON CONFLICT (name) DO UPDATE
SET actor = EXCLUDED.actor, args = EXCLUDED.args, queue = EXCLUDED.queue, cron = EXCLUDED.cron,
    time_zone = EXCLUDED.time_zone, paused = EXCLUDED.paused, concurrency_policy = EXCLUDED.concurrency_policy,
    missed_run_policy = EXCLUDED.missed_run_policy, starting_deadline_seconds = EXCLUDED.starting_deadline_seconds,
    time_limit = EXCLUDED.time_limit, max_retries = EXCLUDED.max_retries, retry_backoff = EXCLUDED.retry_backoff,
    priority = EXCLUDED.priority, deduplicate = EXCLUDED.deduplicate,
    successful_runs_history_limit = EXCLUDED.successful_runs_history_limit,
    failed_runs_history_limit = EXCLUDED.failed_runs_history_limit, source = EXCLUDED.source,
    next_run = EXCLUDED.next_run, notify = EXCLUDED.notify, catchup_window = EXCLUDED.catchup_window,
    catchup_max_runs = EXCLUDED.catchup_max_runs, jitter = EXCLUDED.jitter, start_time = EXCLUDED.start_time,
    end_time = EXCLUDED.end_time, pause_after_failures = EXCLUDED.pause_after_failures,
    paused_reason = EXCLUDED.paused_reason,
    -- a schedule let go of its pause (or changed) starts counting failures afresh
    consecutive_failures = CASE WHEN EXCLUDED.paused THEN s.consecutive_failures ELSE 0 END, updated_at = now()
RETURNING s.name;

-- schedule_delete: remove a schedule; its past runs stay in kubetasks.tasks until purged.
DELETE FROM kubetasks.schedules WHERE name = %(name)s RETURNING name;

-- schedule_set_paused: pause or resume; resuming also sets the next tick computed by the caller. Either way the
-- schedule is no longer paused by failures: a pause by hand is the user's, and resuming counts afresh.
UPDATE kubetasks.schedules
SET paused = %(paused)s, next_run = coalesce(%(next_run)s, next_run), paused_reason = NULL,
    consecutive_failures = 0, updated_at = now()
WHERE name = %(name)s
RETURNING name;

-- schedule_mark_run: remember when a run was last started by hand (trigger, resume).
UPDATE kubetasks.schedules SET last_run = %(now)s WHERE name = %(name)s;

-- schedule_lock_due: the `limit` most overdue unpaused schedules, locked; SKIP LOCKED keeps concurrent schedulers
-- apart, and the re-check of next_run after a wait means a tick another scheduler just advanced is not seen as due.
SELECT * FROM kubetasks.schedules
WHERE NOT paused AND next_run <= %(now)s AND name <> ALL(%(done)s::text[])
ORDER BY next_run, name
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- schedule_live_runs: runs of a schedule that are queued or running (Forbid and Replace look at them).
SELECT id FROM kubetasks.tasks
WHERE schedule_name = %(name)s AND state IN ('queued', 'running')
ORDER BY id;

-- schedule_next_due: seconds until the earliest unpaused schedule is due, so schedulers wake right then;
-- those whose firing just failed (`skip`) are left out, or a broken one would wake them at once, again and again.
SELECT extract(epoch FROM min(next_run) - now())::float8 AS seconds FROM kubetasks.schedules
WHERE NOT paused AND name <> ALL(%(skip)s::text[]);

-- schedule_list_last_success: every schedule that ever succeeded and when it last did (for the metrics).
SELECT name, last_success FROM kubetasks.schedules WHERE last_success IS NOT NULL;

-- schedule_runs_insert_many: one run per (schedule, tick) of a batch; a tick that already has a run, or a
-- schedule whose live run holds its dedup key, inserts nothing (the unique indexes decide, not a read). A run
-- held back by its overlap policy has reason 'Buffered' and an eta that never comes until it is released.
INSERT INTO kubetasks.tasks (queue, actor, args, priority, eta, max_retries, time_limit, retry_backoff,
                             schedule_name, schedule_tick, dedup_key, reason, notify)
SELECT r.queue, r.actor, r.args::jsonb, r.priority, coalesce(r.eta, now()), r.max_retries, r.time_limit,
       r.retry_backoff, r.schedule_name, r.schedule_tick, r.dedup_key, r.reason, r.notify::jsonb
FROM unnest(%(queues)s::text[], %(actors)s::text[], %(args)s::text[], %(priorities)s::int[],
            %(max_retries)s::int[], %(time_limits)s::float8[], %(retry_backoffs)s::float8[], %(names)s::text[],
            %(ticks)s::timestamptz[], %(dedup_keys)s::text[], %(etas)s::timestamptz[], %(reasons)s::text[],
            %(notifies)s::text[])
     AS r(queue, actor, args, priority, max_retries, time_limit, retry_backoff, schedule_name, schedule_tick,
          dedup_key, eta, reason, notify)
ORDER BY r.schedule_name, r.schedule_tick
ON CONFLICT DO NOTHING
RETURNING id, schedule_name, schedule_tick, reason;

-- schedule_advance_many: schedule_advance for a batch (compare-and-set of each next_run).
UPDATE kubetasks.schedules s
SET next_run = a.next_run, last_run = coalesce(a.last_run, s.last_run),
    last_success = greatest(s.last_success, (
        SELECT max(t.finished_at) FROM kubetasks.tasks t
        WHERE t.schedule_name = s.name AND t.state IN ('successful', 'warning')))
FROM unnest(%(names)s::text[], %(expected)s::timestamptz[], %(next_runs)s::timestamptz[],
            %(last_runs)s::timestamptz[]) AS a(name, expected, next_run, last_run)
WHERE s.name = a.name AND s.next_run = a.expected
RETURNING s.name;

-- schedule_prune_history_many: schedule_prune_history for a batch, each schedule with its own limits.
WITH keep AS (
    SELECT * FROM unnest(%(names)s::text[], %(keep_successful)s::int[], %(keep_failed)s::int[])
        AS k(name, keep_successful, keep_failed)
), ranked AS (
    SELECT t.id, t.state IN ('successful', 'warning') AS ok, k.keep_successful, k.keep_failed,
           row_number() OVER (PARTITION BY t.schedule_name, t.state IN ('successful', 'warning')
                              ORDER BY t.id DESC) AS n
    FROM keep k JOIN kubetasks.tasks t ON t.schedule_name = k.name
    WHERE t.state NOT IN ('queued', 'running')
)
DELETE FROM kubetasks.tasks t USING ranked r
WHERE t.id = r.id AND r.n > CASE WHEN r.ok THEN r.keep_successful ELSE r.keep_failed END;

-- schedule_run_counts_many: per schedule of a batch, its live runs (queued or running, not buffered) and its
-- buffered ones: what the overlap policies decide on.
SELECT schedule_name, count(*) FILTER (WHERE reason <> 'Buffered') AS live,
       count(*) FILTER (WHERE reason = 'Buffered') AS buffered
FROM kubetasks.tasks
WHERE schedule_name = ANY(%(names)s::text[]) AND state IN ('queued', 'running')
GROUP BY schedule_name;

-- schedule_release_after_cancel: start the oldest buffered run of each schedule with nothing else live once no
-- cancelled run of it still has an attempt a live worker has not recorded (CancelOther: the cancel has been
-- acted on; for the other policies a backstop, e.g. after the live run was deleted); not while the schedule is
-- paused. Driven by the tasks_buffered index; the live worker sessions ({lock:worker}) are read once.
WITH held AS MATERIALIZED (
    SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = {lock:worker} AND objsubid = 2
), oldest AS MATERIALIZED (
    SELECT DISTINCT ON (schedule_name) id, schedule_name FROM kubetasks.tasks
    WHERE state = 'queued' AND reason = 'Buffered'
    ORDER BY schedule_name, id
), candidates AS MATERIALIZED (
    SELECT b.id FROM oldest b
    WHERE NOT EXISTS (SELECT FROM kubetasks.schedules s WHERE s.name = b.schedule_name AND s.paused)
      AND NOT EXISTS (SELECT FROM kubetasks.tasks l
                      WHERE l.schedule_name = b.schedule_name AND l.state IN ('queued', 'running')
                        AND l.reason <> 'Buffered')
      AND NOT EXISTS (SELECT FROM kubetasks.tasks c
                      WHERE c.schedule_name = b.schedule_name AND c.state = 'cancelled'
                        AND c.session::oid IN (SELECT objid FROM held)
                        AND NOT EXISTS (SELECT FROM kubetasks.task_attempts a
                                        WHERE a.task_id = c.id AND a.attempt = c.attempts))
), released AS (
    UPDATE kubetasks.tasks t SET eta = now(), reason = 'Queued', updated_at = now()
    FROM candidates WHERE t.id = candidates.id AND t.state = 'queued' AND t.reason = 'Buffered'
    RETURNING t.id, t.queue
)
SELECT released.id FROM released
CROSS JOIN LATERAL (SELECT pg_notify('kubetasks', released.queue || ':' || released.id)) AS told;

-- schedule_ticks_taken: which of these ticks of a schedule already have a run (a backfill leaves them be).
SELECT schedule_tick FROM kubetasks.tasks
WHERE schedule_name = %(name)s AND schedule_tick = ANY(%(ticks)s::timestamptz[]);
