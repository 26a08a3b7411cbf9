-- kubetasks schema, version 7: more Schedule policies.
-- Overlap: BufferOne / BufferAll hold the next run back ("buffered": queued, reason 'Buffered', eta 9999-12-31,
-- which the claim query never reaches) until the live run ends; CancelOther cancels the live run and holds the
-- new one until the cancelled attempt has stopped on its worker. Missed runs: CatchUp fires every missed tick
-- inside catchup_window, at most catchup_max_runs. jitter delays each run's eta; start_time / end_time bound
-- the ticks; pause_after_failures pauses a schedule after that many failed runs in a row (paused_reason says
-- why). The failure count and the release of buffered runs happen in the transaction of the run's outcome.
ALTER TABLE kubetasks.schedules DROP CONSTRAINT schedules_concurrency_policy_check;
ALTER TABLE kubetasks.schedules ADD CONSTRAINT schedules_concurrency_policy_check CHECK (
    concurrency_policy IN ('Allow', 'Forbid', 'Replace', 'BufferOne', 'BufferAll', 'CancelOther'));
ALTER TABLE kubetasks.schedules DROP CONSTRAINT schedules_missed_run_policy_check;
ALTER TABLE kubetasks.schedules ADD CONSTRAINT schedules_missed_run_policy_check CHECK (
    missed_run_policy IN ('Skip', 'RunOnce', 'CatchUp'));
ALTER TABLE kubetasks.schedules
    ADD COLUMN catchup_window double precision CHECK (catchup_window > 0),
    ADD COLUMN catchup_max_runs integer CHECK (catchup_max_runs > 0),
    ADD COLUMN jitter double precision CHECK (jitter >= 0),
    ADD COLUMN start_time timestamptz,
    ADD COLUMN end_time timestamptz,
    ADD COLUMN pause_after_failures integer CHECK (pause_after_failures > 0),
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    ADD COLUMN paused_reason text,
    ADD CONSTRAINT schedules_start_before_end CHECK (end_time > start_time);

-- Buffered runs, per schedule in order: what a run's end releases.
CREATE INDEX tasks_buffered ON kubetasks.tasks (schedule_name, id) WHERE state = 'queued' AND reason = 'Buffered';

-- A schedule's run reached a final state: count failures in a row (pausing the schedule at its limit), then
-- release the oldest buffered run once no other run of the schedule is live (whatever the policy is now: runs
-- buffered before a change of policy are not left behind), unless the schedule is paused. Under CancelOther a
-- run whose attempt a live worker has not recorded yet (a cancel it has not acted on: its session, advisory
-- lock class 7013 = protocol.WORKER_LOCK, is held and the attempt has no row) releases nothing: the scheduler's
-- pass does once the attempt is recorded or the worker is gone.
CREATE FUNCTION kubetasks.schedule_run_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    policy text;
    held_back boolean;
    released record;
BEGIN
    IF NEW.state = 'error' THEN
        UPDATE kubetasks.schedules s
        SET consecutive_failures = s.consecutive_failures + 1,
            paused = s.paused OR coalesce(s.consecutive_failures + 1 >= s.pause_after_failures, false),
            paused_reason = CASE WHEN NOT s.paused AND s.consecutive_failures + 1 >= s.pause_after_failures
                THEN format('%s failed runs in a row (pauseAfterFailures %s); the last, task %s: %s',
                            s.consecutive_failures + 1, s.pause_after_failures, NEW.id,
                            left(coalesce(NEW.error, NEW.reason), 500))
                ELSE s.paused_reason END
        WHERE s.name = NEW.schedule_name
        RETURNING s.concurrency_policy, s.paused INTO policy, held_back;
    ELSIF NEW.state IN ('successful', 'warning') THEN
        UPDATE kubetasks.schedules s SET consecutive_failures = 0
        WHERE s.name = NEW.schedule_name AND s.consecutive_failures > 0;
    END IF;
    IF policy IS NULL THEN
        SELECT s.concurrency_policy, s.paused INTO policy, held_back
        FROM kubetasks.schedules s WHERE s.name = NEW.schedule_name;
    END IF;
    IF held_back THEN  -- a paused schedule's buffered runs wait for it to be resumed
        RETURN NULL;
    END IF;
    IF policy = 'CancelOther' AND NEW.session IS NOT NULL AND EXISTS (
            SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 7013
            AND l.objid = NEW.session::oid AND l.objsubid = 2)
        AND NOT EXISTS (SELECT FROM kubetasks.task_attempts a WHERE a.task_id = NEW.id AND a.attempt = NEW.attempts)
    THEN
        RETURN NULL;
    END IF;
    UPDATE kubetasks.tasks t SET eta = now(), reason = 'Queued', updated_at = now()
    WHERE t.id = (SELECT b.id FROM kubetasks.tasks b
                  WHERE b.schedule_name = NEW.schedule_name AND b.state = 'queued' AND b.reason = 'Buffered'
                  ORDER BY b.id LIMIT 1)
      AND NOT EXISTS (SELECT FROM kubetasks.tasks l
                      WHERE l.schedule_name = NEW.schedule_name AND l.state IN ('queued', 'running')
                        AND l.reason <> 'Buffered')
    RETURNING t.id, t.queue INTO released;
    IF released.id IS NOT NULL THEN
        PERFORM pg_notify('kubetasks', released.queue || ':' || released.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_schedule_run_finished AFTER UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.schedule_name IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
                       AND NEW.state IN ('successful', 'warning', 'error', 'cancelled'))
    EXECUTE FUNCTION kubetasks.schedule_run_finished();
