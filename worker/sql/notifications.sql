-- Queries on kubetasks.notifications (the outbox the tasks_notification_enqueue trigger fills), one named block each.
-- Each event is claimed, sent and marked in one short transaction of its own, its row locked meanwhile (SKIP
-- LOCKED keeps the services of other workers away): a worker killed mid-send leaves it pending, so it is sent
-- again (at least once; the receiver deduplicates by event_id), and a sent event is never sent twice otherwise.

-- task_set_notify: attach notification rules to a task just enqueued, in the enqueue's transaction.
UPDATE kubetasks.tasks SET notify = %(notify)s WHERE id = %(id)s;

-- notification_claim: the oldest due pending event, locked until this delivery commits.
SELECT * FROM kubetasks.notifications
WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- notification_delivered: record a successful delivery.
UPDATE kubetasks.notifications
SET state = 'delivered', attempts = attempts + 1, delivered_at = now(), last_error = NULL
WHERE id = %(id)s;

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
