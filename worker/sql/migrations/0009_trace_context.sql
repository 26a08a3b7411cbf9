-- kubetasks schema, version 9: the W3C trace context of the enqueue, so a task's attempts join its trace.
-- Written by enqueue when tracing is on (worker/spans.py), NULL otherwise; the claim returns it to the worker.
ALTER TABLE kubetasks.tasks ADD COLUMN traceparent text
    CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

-- The notification trigger is queued only for an outcome one of the task's rules may announce, or for a run of a
-- Schedule (its failure streak is kept on every outcome): decided in the WHEN clause by jsonb containment, so the
-- claim, a retry and an outcome no rule names (a task whose only rule is on `failed` succeeding, the usual case)
-- queue no after-trigger event and call no PL/pgSQL. The function decides as before; this only filters.
DROP TRIGGER tasks_notification_enqueue ON kubetasks.tasks;
CREATE TRIGGER tasks_notification_enqueue AFTER UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.notify IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state AND CASE NEW.state
        WHEN 'successful' THEN NEW.schedule_name IS NOT NULL OR NEW.notify @> '[{"events": ["succeeded"]}]'
        WHEN 'warning' THEN NEW.schedule_name IS NOT NULL OR NEW.notify @> '[{"events": ["warning"]}]'
        WHEN 'error' THEN NEW.schedule_name IS NOT NULL OR NEW.notify @> '[{"events": ["failed"]}]'
                          OR NEW.notify @> '[{"events": ["retriesExhausted"]}]'
        WHEN 'cancelled' THEN NEW.notify @> '[{"events": ["cancelled"]}]'
        ELSE false END)
    EXECUTE FUNCTION kubetasks.notification_enqueue();
