-- kubetasks schema, version 6: one liveness lock per worker session instead of one advisory lock per attempt.
-- A worker's claiming connection draws a number from kubetasks.worker_sessions and holds the session-level
-- advisory lock (7013 = protocol.WORKER_LOCK, number) while it lives; every task it claims records the number
-- in tasks.session, and the rescuer takes a task back only once that lock is free. Rows claimed by workers of
-- earlier versions have no session and keep their per-attempt lock (7011), which the rescuer still checks.
CREATE SEQUENCE kubetasks.worker_sessions AS integer CYCLE;

ALTER TABLE kubetasks.tasks ADD COLUMN session integer;

-- Workers of earlier versions rescue by the per-attempt lock alone, so during a rolling upgrade they would take
-- the tasks of live new workers: their rescue update is skipped while the task's session lock is held. (The
-- current rescuer clears the session in the same update, so this never fires for it.)
CREATE FUNCTION kubetasks.tasks_rescue_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(7013, OLD.session) THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_rescue_guard BEFORE UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.reason = 'WorkerLost' AND OLD.session IS NOT NULL AND NEW.session IS NOT NULL)
    EXECUTE FUNCTION kubetasks.tasks_rescue_guard();
