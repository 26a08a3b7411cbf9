-- Queries only the metrics collector runs (worker/metrics.py DatabaseCollector), one named block each: "-- name: why".
-- Each reads a partial index's rows at most (runnable, executing, pending events), so a scrape stays cheap.

-- queue_oldest_runnable: per queue, seconds the oldest task runnable now has been waiting since it became due.
SELECT queue, extract(epoch FROM now() - min(eta))::float8 AS seconds
FROM kubetasks.tasks
WHERE worker IS NULL AND state IN ('queued', 'running') AND eta <= now()
GROUP BY queue;

-- task_count_overdue: per queue, attempts running longer than their time limit plus a grace (stuck, not stopped).
SELECT queue, count(*) AS overdue
FROM kubetasks.tasks
WHERE worker IS NOT NULL
  AND attempt_started_at < now() - make_interval(secs => time_limit + %(grace)s)
GROUP BY queue;

-- schedule_list_crons: every unpaused schedule's cron and time zone (the collector derives each one's period).
SELECT name, cron, time_zone FROM kubetasks.schedules WHERE NOT paused;

-- notification_count_by_state: outbox rows by state, and the age of the oldest pending one.
SELECT state, count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM kubetasks.notifications
GROUP BY state;
