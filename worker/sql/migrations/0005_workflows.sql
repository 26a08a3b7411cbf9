-- kubetasks schema, version 5: workflows (groups, chains of steps, callbacks, dynamic fan-out).
-- A workflow is a parent task (actor 'kubetasks.workflow') that never runs on a worker: it waits in state
-- 'running' with no worker and eta 9999-12-31 (never due), which the claim query (eta <= now()) and the rescuer
-- (worker IS NOT NULL) both skip. Its children are ordinary tasks with parent_id and step set.
-- The bookkeeping is done by a row trigger in the transaction that writes each child's final state: one
-- UPDATE of the step's counters (its row lock serialises racing last children), and the child that brings
-- `pending` to zero starts the next step, or finishes the parent and enqueues the callback, exactly once.
-- Retries keep a child 'running', so only its final state counts.
ALTER TABLE kubetasks.tasks
    ADD COLUMN parent_id bigint REFERENCES kubetasks.tasks (id) ON DELETE CASCADE,
    ADD COLUMN step integer CHECK (step >= 0),
    ADD CONSTRAINT tasks_step_with_parent CHECK ((parent_id IS NULL) = (step IS NULL));
CREATE INDEX tasks_children ON kubetasks.tasks (parent_id, step, id) WHERE parent_id IS NOT NULL;

-- One row per workflow (parent task).
CREATE TABLE kubetasks.workflows (
    task_id bigint PRIMARY KEY REFERENCES kubetasks.tasks (id) ON DELETE CASCADE,
    -- 'stop': a step with a failed child ends the workflow in error once that step is done; 'continue':
    -- later steps run anyway and the workflow ends in warning.
    on_failure text NOT NULL DEFAULT 'stop' CHECK (on_failure IN ('stop', 'continue')),
    -- Enqueued once each time the workflow finishes: {"actor", "args", "queue", ...}; its args gain
    -- "workflow" (the parent id) and "state".
    callback jsonb,
    callback_id bigint,
    steps integer NOT NULL CHECK (steps >= 1),
    step integer NOT NULL DEFAULT 0 CHECK (step >= 0 AND step < steps)
);

-- One row per step: its children's specification until it starts, then its counters.
CREATE TABLE kubetasks.workflow_steps (
    workflow_id bigint NOT NULL REFERENCES kubetasks.workflows (task_id) ON DELETE CASCADE,
    step integer NOT NULL CHECK (step >= 0),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    -- [{"actor", "args", "queue", "priority", "max_retries", "time_limit", "retry_backoff"}], NULL once started.
    children jsonb,
    total integer NOT NULL DEFAULT 0 CHECK (total >= 0),
    pending integer NOT NULL DEFAULT 0 CHECK (pending >= 0),
    succeeded integer NOT NULL DEFAULT 0,
    warned integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    cancelled integer NOT NULL DEFAULT 0,
    failed_child bigint,  -- the first child that failed, named in the workflow's error
    started_at timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (workflow_id, step)
);

-- Spawns made from inside a running task, keyed by (task, sequence number within the task): a task re-run
-- after its worker was lost spawns nothing twice.
CREATE TABLE kubetasks.workflow_spawns (
    task_id bigint NOT NULL REFERENCES kubetasks.tasks (id) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    workflow_id bigint,
    children integer NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, seq)
);

-- The steps of a workflow with their counts, for the parent's result and `tasks show`.
CREATE FUNCTION kubetasks.workflow_progress(wf bigint) RETURNS jsonb LANGUAGE sql STABLE
    RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'name', s.name, 'total', s.total, 'done', s.total - s.pending, 'succeeded', s.succeeded,
                'warned', s.warned, 'failed', s.failed, 'cancelled', s.cancelled,
                'state', CASE WHEN s.started_at IS NULL THEN 'waiting'
                              WHEN s.pending > 0 OR s.finished_at IS NULL THEN 'running' ELSE 'done' END)
                ORDER BY s.step), '[]'::jsonb)
            FROM kubetasks.workflow_steps s WHERE s.workflow_id = wf);

-- End a workflow: its state from its steps' counts, the callback enqueued once.
CREATE FUNCTION kubetasks.workflow_finish(wf bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w kubetasks.workflows;
    bad record;
    warned boolean;
    final kubetasks.task_state;
    why text;
    message text;
    callback_task bigint;
BEGIN
    SELECT * INTO w FROM kubetasks.workflows WHERE task_id = wf;
    SELECT s.name, s.failed_child, c.actor, c.state, c.error INTO bad
    FROM kubetasks.workflow_steps s LEFT JOIN kubetasks.tasks c ON c.id = s.failed_child
    WHERE s.workflow_id = wf AND s.failed_child IS NOT NULL ORDER BY s.step LIMIT 1;
    SELECT bool_or(s.warned > 0) INTO warned FROM kubetasks.workflow_steps s WHERE s.workflow_id = wf;
    IF bad.failed_child IS NOT NULL AND w.on_failure = 'stop' THEN
        final := 'error';
        why := 'ChildFailed';
        message := format('step %s: child %s (%s) %s: %s', bad.name, bad.failed_child, bad.actor, bad.state,
                          coalesce(split_part(bad.error, E'\n', 1), 'no error message'));
    ELSIF bad.failed_child IS NOT NULL THEN
        final := 'warning';
        why := 'SucceededWithFailedChildren';
        message := format('step %s: child %s (%s) %s', bad.name, bad.failed_child, bad.actor, bad.state);
    ELSIF warned THEN
        final := 'warning';
        why := 'SucceededWithWarnings';
    ELSE
        final := 'successful';
        why := 'Succeeded';
    END IF;
    UPDATE kubetasks.tasks
    SET state = final, reason = why, error = message, result = jsonb_build_object('steps', kubetasks.workflow_progress(wf)),
        eta = now(), finished_at = now(), updated_at = now()
    WHERE id = wf;
    IF w.callback IS NOT NULL THEN
        INSERT INTO kubetasks.tasks (queue, actor, args, priority, max_retries, time_limit, retry_backoff)
        SELECT c->>'queue', c->>'actor',
               coalesce(c->'args', '{}'::jsonb) || jsonb_build_object('workflow', wf, 'state', final),
               (c->>'priority')::smallint, (c->>'max_retries')::integer, (c->>'time_limit')::double precision,
               (c->>'retry_backoff')::double precision
        FROM (SELECT w.callback AS c) AS spec
        RETURNING id INTO callback_task;
        UPDATE kubetasks.workflows SET callback_id = callback_task WHERE task_id = wf;
    END IF;
END
$$;

-- Move a workflow on from its current step as far as it can: start a step that has not started, close a
-- step whose children are all final, then start the next or finish. Called with the current step's row
-- locked (by the child trigger's UPDATE) or at creation; the workflow row lock serialises it.
CREATE FUNCTION kubetasks.workflow_advance(wf bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w kubetasks.workflows;
    s kubetasks.workflow_steps;
    parent_state kubetasks.task_state;
    started integer;
BEGIN
    SELECT * INTO w FROM kubetasks.workflows WHERE task_id = wf FOR UPDATE;
    SELECT state INTO parent_state FROM kubetasks.tasks WHERE id = wf;
    IF w.task_id IS NULL OR parent_state IS DISTINCT FROM 'running' THEN
        RETURN;  -- cancelled, finished or being deleted: counters only
    END IF;
    LOOP
        SELECT * INTO s FROM kubetasks.workflow_steps WHERE workflow_id = wf AND step = w.step FOR UPDATE;
        IF s.started_at IS NULL THEN
            INSERT INTO kubetasks.tasks (queue, actor, args, priority, max_retries, time_limit, retry_backoff,
                                         parent_id, step)
            SELECT c->>'queue', c->>'actor', coalesce(c->'args', '{}'::jsonb), (c->>'priority')::smallint,
                   (c->>'max_retries')::integer, (c->>'time_limit')::double precision,
                   (c->>'retry_backoff')::double precision, wf, w.step
            FROM jsonb_array_elements(coalesce(s.children, '[]'::jsonb)) AS c;
            GET DIAGNOSTICS started = ROW_COUNT;
            UPDATE kubetasks.workflow_steps
            SET started_at = now(), children = NULL, total = total + started, pending = pending + started
            WHERE workflow_id = wf AND step = w.step
            RETURNING * INTO s;
            UPDATE kubetasks.tasks SET result = jsonb_build_object('steps', kubetasks.workflow_progress(wf)),
                                       reason = 'Step:' || s.name, updated_at = now()
            WHERE id = wf;
        END IF;
        IF s.pending > 0 THEN
            RETURN;
        END IF;
        UPDATE kubetasks.workflow_steps SET finished_at = coalesce(finished_at, now())
        WHERE workflow_id = wf AND step = w.step;
        IF (s.failed_child IS NOT NULL AND w.on_failure = 'stop') OR w.step = w.steps - 1 THEN
            PERFORM kubetasks.workflow_finish(wf);
            RETURN;
        END IF;
        w.step := w.step + 1;
        UPDATE kubetasks.workflows SET step = w.step WHERE task_id = wf;
    END LOOP;
END
$$;

-- A child reached a final state (or was deleted before it did): count it, and let the last one move on.
-- A child queued again on its own (`tasks retry <child>`) is pending again. A step already closed is never
-- counted below zero. An error while moving on (a bad callback, say) fails the workflow with that error
-- rather than the worker's outcome batch; lock conflicts are raised, so the batch is retried as usual.
CREATE FUNCTION kubetasks.workflow_child_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    child record;
    outcome kubetasks.task_state;
    remaining integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        child := OLD;
        outcome := 'cancelled';
    ELSIF NEW.state IN ('queued', 'running') THEN
        UPDATE kubetasks.workflow_steps
        SET pending = pending + 1,
            succeeded = succeeded - (OLD.state = 'successful')::integer,
            warned = warned - (OLD.state = 'warning')::integer,
            failed = failed - (OLD.state = 'error')::integer,
            cancelled = cancelled - (OLD.state = 'cancelled')::integer,
            failed_child = CASE WHEN failed_child = NEW.id THEN NULL ELSE failed_child END
        WHERE workflow_id = NEW.parent_id AND step = NEW.step;
        RETURN NULL;
    ELSE
        child := NEW;
        outcome := NEW.state;
    END IF;
    UPDATE kubetasks.workflow_steps
    SET pending = pending - 1,
        succeeded = succeeded + (outcome = 'successful')::integer,
        warned = warned + (outcome = 'warning')::integer,
        failed = failed + (outcome = 'error')::integer,
        cancelled = cancelled + (outcome = 'cancelled')::integer,
        failed_child = CASE WHEN failed_child IS NULL AND outcome IN ('error', 'cancelled') THEN child.id
                            ELSE failed_child END
    WHERE workflow_id = child.parent_id AND step = child.step AND pending > 0
    RETURNING pending INTO remaining;
    IF remaining = 0 THEN
        BEGIN
            PERFORM kubetasks.workflow_advance(child.parent_id);
        EXCEPTION
            WHEN deadlock_detected OR serialization_failure OR lock_not_available OR query_canceled THEN
                RAISE;
            WHEN OTHERS THEN
                UPDATE kubetasks.tasks
                SET state = 'error', reason = 'WorkflowFailed', eta = now(), finished_at = now(), updated_at = now(),
                    error = 'could not move on after child ' || child.id || ': ' || SQLERRM
                WHERE id = child.parent_id AND state = 'running';
        END;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_workflow_child AFTER UPDATE ON kubetasks.tasks
    FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL AND (OLD.state IN ('queued', 'running'))
                       <> (NEW.state IN ('queued', 'running')))
    EXECUTE FUNCTION kubetasks.workflow_child_finished();
CREATE TRIGGER tasks_workflow_child_deleted AFTER DELETE ON kubetasks.tasks
    FOR EACH ROW WHEN (OLD.parent_id IS NOT NULL AND OLD.state IN ('queued', 'running'))
    EXECUTE FUNCTION kubetasks.workflow_child_finished();

-- Cancel a workflow and its children not yet finished. Locks in the order a finishing child takes them
-- (step rows, then the workflow, then tasks), so a child finishing at the same moment waits or is skipped
-- (it is finishing anyway) instead of deadlocking. Returns the number of children cancelled, NULL when the
-- workflow had already finished.
CREATE FUNCTION kubetasks.workflow_cancel(wf bigint, message text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    cancelled_children integer;
BEGIN
    PERFORM FROM kubetasks.workflow_steps WHERE workflow_id = wf ORDER BY step FOR UPDATE;
    PERFORM FROM kubetasks.workflows WHERE task_id = wf FOR UPDATE;
    UPDATE kubetasks.tasks
    SET state = 'cancelled', reason = 'Cancelled', worker = NULL, eta = now(), finished_at = now(),
        updated_at = now(), error = coalesce(message, 'cancelled'),
        result = jsonb_build_object('steps', kubetasks.workflow_progress(wf))
    WHERE id = wf AND state IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    WITH live AS (
        SELECT id FROM kubetasks.tasks WHERE parent_id = wf AND state IN ('queued', 'running')
        ORDER BY id FOR UPDATE SKIP LOCKED
    ), done AS (
        UPDATE kubetasks.tasks t
        SET state = 'cancelled', reason = 'Cancelled', worker = NULL, finished_at = now(), updated_at = now(),
            error = 'workflow ' || wf || ' was cancelled'
        FROM live WHERE t.id = live.id
        RETURNING t.id
    )
    SELECT count(*) FILTER (WHERE pg_notify('kubetasks_cancel', id::text) IS NULL) INTO cancelled_children
    FROM done;
    UPDATE kubetasks.tasks SET result = jsonb_build_object('steps', kubetasks.workflow_progress(wf)) WHERE id = wf;
    RETURN cancelled_children;
END
$$;

-- Retry a failed or cancelled workflow: re-run the failed and cancelled children of the step where it
-- stopped and carry on from there. Returns the number of children queued again, NULL when not retryable.
CREATE FUNCTION kubetasks.workflow_retry(wf bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    w kubetasks.workflows;
    requeued integer;
BEGIN
    PERFORM FROM kubetasks.workflow_steps WHERE workflow_id = wf ORDER BY step FOR UPDATE;
    SELECT * INTO w FROM kubetasks.workflows WHERE task_id = wf FOR UPDATE;
    UPDATE kubetasks.tasks
    SET state = 'running', reason = 'Running', eta = '9999-12-31 00:00:00+00', error = NULL, finished_at = NULL, updated_at = now()
    WHERE id = wf AND state IN ('error', 'cancelled');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE kubetasks.tasks
    SET state = 'queued', reason = 'Queued', worker = NULL, attempts = 0, eta = now(), result = NULL, error = NULL,
        started_at = NULL, attempt_started_at = NULL, finished_at = NULL, updated_at = now()
    WHERE parent_id = wf AND step = w.step AND state IN ('error', 'cancelled');
    GET DIAGNOSTICS requeued = ROW_COUNT;
    -- Recount the step from its children (once per retry, not per child).
    UPDATE kubetasks.workflow_steps s
    SET pending = c.pending, succeeded = c.succeeded, warned = c.warned, failed = c.failed,
        cancelled = c.cancelled, failed_child = c.failed_child, finished_at = NULL
    FROM (SELECT count(*) FILTER (WHERE state IN ('queued', 'running'))::integer AS pending,
                 count(*) FILTER (WHERE state = 'successful')::integer AS succeeded,
                 count(*) FILTER (WHERE state = 'warning')::integer AS warned,
                 count(*) FILTER (WHERE state = 'error')::integer AS failed,
                 count(*) FILTER (WHERE state = 'cancelled')::integer AS cancelled,
                 min(id) FILTER (WHERE state IN ('error', 'cancelled')) AS failed_child
          FROM kubetasks.tasks WHERE parent_id = wf AND step = w.step) AS c
    WHERE s.workflow_id = wf AND s.step = w.step;
    PERFORM pg_notify('kubetasks', q.queue || ':' || q.id)
    FROM (SELECT queue, min(id) AS id FROM kubetasks.tasks WHERE parent_id = wf AND step = w.step AND state = 'queued'
          GROUP BY queue) AS q;
    PERFORM kubetasks.workflow_advance(wf);  -- a step with nothing left to run moves on at once
    RETURN requeued;
END
$$;
