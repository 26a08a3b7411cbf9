-- kubetasks schema, version 6: one liveness lock per worker session instead of one advisory lock per attempt.
-- A worker's claiming connection draws a number from kubetasks.worker_sessions and holds the session-level
-- advisory lock (7013 = protocol.WORKER_LOCK, number) while it lives; every task it claims records the number
-- in tasks.session, and the rescuer takes a task back only once that lock is free. Rows claimed by workers of
-- earlier versions have no session and keep their per-attempt lock (7011), which the rescuer still checks.
CREATE SEQUENCE kubetasks.worker_sessions AS integer CYCLE;

ALTER TABLE kubetasks.tasks ADD COLUMN session integer;

-- Workers of earlier versions rescue by the per-attempt lock alone, so during a rolling upgrade they would take
-- the tasks of live new workers: such a rescue fails (and rolls back) while the task's session lock is held;
-- the rescuers of this version take back lost tasks of either version. An AFTER trigger, because a BEFORE
-- UPDATE row trigger makes every update of a task (each claim, each outcome) re-read and lock the row first.
-- (The current rescuer clears the session in the same update, so this never fires for it.)
CREATE FUNCTION kubetasks.tasks_rescue_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(7013, OLD.session) THEN
        RAISE EXCEPTION 'task % belongs to the live worker session %: not rescued', OLD.id, OLD.session
            USING HINT = 'A worker from before schema 6 tried to rescue it; workers of this version rescue '
                         'every lost task, whichever version claimed it.';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_rescue_guard AFTER UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.reason = 'WorkerLost' AND OLD.session IS NOT NULL AND NEW.session IS NOT NULL)
    EXECUTE FUNCTION kubetasks.tasks_rescue_guard();
