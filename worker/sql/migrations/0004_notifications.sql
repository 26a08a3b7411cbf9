-- kubetasks schema, version 4: notification rules and their outbox.
-- Rules are copied onto the task row at enqueue time (from the call, the actor, a Schedule or a TaskRun), so
-- the trigger below sees them without a join. It writes one outbox row per matching rule in the transaction
-- that records the task's outcome: the event commits with the outcome or not at all, whoever wrote it (the
-- consumer, the rescuer, a cancel). Tasks without rules never run it (the WHEN clause is checked first).
ALTER TABLE kubetasks.schedules ADD COLUMN notify jsonb CHECK (jsonb_typeof(notify) = 'array');
ALTER TABLE kubetasks.tasks ADD COLUMN notify jsonb CHECK (jsonb_typeof(notify) = 'array');

-- The outbox: one row per event and rule, delivered by the workers' notification service (at least once;
-- event_id is the CloudEvents id and the e-mail Message-ID, for receivers to deduplicate by). No foreign key
-- to tasks: an event outlives the purge of its task, and carries its own snapshot of it in `payload`.
CREATE TABLE kubetasks.notifications (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL DEFAULT gen_random_uuid(),  -- random (v4): no index needed to keep it unique
    -- CloudEvents type, e.g. dev.kubetasks.task.failed.
    event_type text NOT NULL CHECK (event_type ~ '^dev\.kubetasks\.[a-z_]+\.[a-z_]+$'),
    task_id bigint,
    schedule_name text,
    rule_index integer NOT NULL CHECK (rule_index >= 0),
    -- The rule as stored on the task: where to send (email or webhook) and how.
    rule jsonb NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    CONSTRAINT notifications_delivered_iff_state CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
-- The delivery service's index: only undelivered rows.
CREATE INDEX notifications_pending ON kubetasks.notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_by_task ON kubetasks.notifications (task_id) WHERE task_id IS NOT NULL;

-- Consecutive failed runs per schedule (runs are pruned by the history limits, so they cannot be counted).
CREATE TABLE kubetasks.notification_streaks (
    schedule_name text PRIMARY KEY,
    failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Turn a task's outcome into outbox rows, one per rule whose events match; the most specific event type wins
-- (consecutive_failures, then retries_exhausted, then failed). Notifies the delivery service on commit.
CREATE FUNCTION kubetasks.notification_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    streak integer;
    rule jsonb;
    idx bigint;
    events jsonb;
    chosen text;
    written integer := 0;
BEGIN
    kind := CASE NEW.state WHEN 'successful' THEN 'succeeded' WHEN 'warning' THEN 'warning'
                           WHEN 'error' THEN 'failed' WHEN 'cancelled' THEN 'cancelled' END;
    IF kind IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.schedule_name IS NOT NULL AND kind <> 'cancelled' THEN
        INSERT INTO kubetasks.notification_streaks AS s (schedule_name, failures)
        VALUES (NEW.schedule_name, CASE WHEN kind = 'failed' THEN 1 ELSE 0 END)
        ON CONFLICT (schedule_name) DO UPDATE
        SET failures = CASE WHEN kind = 'failed' THEN s.failures + 1 ELSE 0 END, updated_at = now()
        RETURNING s.failures INTO streak;
    END IF;
    FOR rule, idx IN SELECT r.value, r.ordinality - 1 FROM jsonb_array_elements(NEW.notify) WITH ORDINALITY AS r LOOP
        events := coalesce(rule -> 'events', '[]'::jsonb);
        chosen := CASE
            WHEN kind = 'failed' AND events ? 'consecutiveFailures'
                 AND streak = coalesce((rule ->> 'consecutiveFailures')::integer, 3)
                THEN 'dev.kubetasks.schedule.consecutive_failures'
            WHEN kind = 'failed' AND events ? 'retriesExhausted' AND NEW.attempts > NEW.max_retries
                THEN 'dev.kubetasks.task.retries_exhausted'
            WHEN events ? kind THEN 'dev.kubetasks.task.' || kind
        END;
        CONTINUE WHEN chosen IS NULL;
        INSERT INTO kubetasks.notifications (event_type, task_id, schedule_name, rule_index, rule, payload)
        VALUES (chosen, NEW.id, NEW.schedule_name, idx, rule, jsonb_build_object(
            'id', NEW.id, 'actor', NEW.actor, 'queue', NEW.queue, 'state', NEW.state, 'reason', NEW.reason,
            'attempts', NEW.attempts, 'maxRetries', NEW.max_retries, 'error', left(NEW.error, 4000),
            'schedule', NEW.schedule_name, 'objectRef', NEW.object_ref, 'createdAt', NEW.created_at,
            'startedAt', NEW.started_at, 'finishedAt', NEW.finished_at,
            'durationSeconds', extract(epoch FROM NEW.finished_at - NEW.started_at)::float8,
            'consecutiveFailures', streak));
        written := written + 1;
    END LOOP;
    IF written > 0 THEN
        PERFORM pg_notify('kubetasks_notification', '');  -- identical payloads: one per transaction
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_notification_enqueue AFTER UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.notify IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION kubetasks.notification_enqueue();
