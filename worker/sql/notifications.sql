-- Queries on kubetasks.notifications (the outbox the tasks_notification_enqueue trigger fills), one named block each.
-- A round claims a few due events, sends them (concurrently) and marks them in one transaction, their rows locked
-- meanwhile (SKIP LOCKED keeps the services of other workers away): a worker killed mid-round leaves them
-- pending, so they are sent again (at least once; the receiver deduplicates by event_id); a sent and recorded
-- event is never sent again.

-- notification_session: the delivery connection commits without waiting for the WAL flush: a "delivered" mark
-- lost in a database crash only means one more delivery, which at-least-once allows (receivers dedup by id).
SET synchronous_commit = off;

-- notification_claim: the oldest due pending events, locked until this round of deliveries commits.
SELECT * FROM kubetasks.notifications
WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- notification_delivered: record successful deliveries.
UPDATE kubetasks.notifications
SET state = 'delivered', attempts = attempts + 1, delivered_at = now(), last_error = NULL
WHERE id = ANY(%(ids)s::bigint[]);

-- notification_failed: record a failed attempt; retried after the backoff given, or given up after max_attempts.
UPDATE kubetasks.notifications
SET attempts = attempts + 1, last_error = left(%(error)s, 2000),
    state = CASE WHEN attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s
RETURNING state, attempts;

-- notification_next_due: seconds until the earliest pending event is due (NULL: none), so delivery sleeps just that.
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 AS seconds
FROM kubetasks.notifications WHERE state = 'pending';

-- notification_purge: delete delivered and given-up events older than the retention.
DELETE FROM kubetasks.notifications
WHERE state <> 'pending' AND created_at < now() - make_interval(secs => %(older_than)s);

-- notification_list: a task's events, oldest first (CLI, tests).
SELECT * FROM kubetasks.notifications WHERE task_id = %(task_id)s ORDER BY id;

-- notification_insert_missed: one outbox event per missed tick and rule naming scheduleMissed, written by the
-- scheduler in the transaction that advances the schedule past the tick (so once, whoever fires it).
WITH written AS (
    INSERT INTO kubetasks.notifications (event_type, schedule_name, rule_index, rule, payload)
    SELECT 'dev.kubetasks.schedule.missed', e.schedule_name, e.rule_index, e.rule::jsonb, e.payload::jsonb
    FROM unnest(%(names)s::text[], %(rule_indexes)s::int[], %(rules)s::text[], %(payloads)s::text[])
        AS e(schedule_name, rule_index, rule, payload)
    RETURNING id
)
SELECT count(*) AS n, pg_notify('kubetasks_notification', '') FROM written HAVING count(*) > 0;
