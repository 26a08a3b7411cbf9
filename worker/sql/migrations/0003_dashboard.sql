-- kubetasks schema, version 3: what the dashboard reads and filters on, kept cheap at millions of rows.
-- The namespace a task belongs to, for per-namespace authorisation: its Schedule's ("<ns>/<name>"), else the
-- one in an operator object_ref ("taskrun/<ns>/<name>/<uid>", "trigger/<ns>/<name>/<value>"); NULL for a
-- standalone task (cluster scope).
CREATE FUNCTION kubetasks.task_namespace(schedule_name text, object_ref text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
        WHEN schedule_name IS NOT NULL THEN split_part(schedule_name, '/', 1)
        WHEN object_ref ~ '^(taskrun|trigger)/[^/]+/' THEN split_part(object_ref, '/', 2)
    END;

-- A free-text description given when a task is created from the dashboard's task manager.
ALTER TABLE kubetasks.tasks ADD COLUMN description text CHECK (length(description) <= 1000);

-- The task list's filters, each newest first (keyset pagination on id). Finished rows are the bulk of a big
-- table, so the default view ("exclude successful") reads two small indexes: unfinished rows, and finished
-- rows that did not succeed. Each partial index is defined on finished_at, which the workers' claim query never
-- mentions, so none of them can be picked for it instead of tasks_claimable.
CREATE INDEX tasks_unfinished ON kubetasks.tasks (id) WHERE finished_at IS NULL;
CREATE INDEX tasks_finished_unsuccessful ON kubetasks.tasks (id) WHERE finished_at IS NOT NULL AND state <> 'successful';
CREATE INDEX tasks_finished_by_state ON kubetasks.tasks (state, id) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_by_actor ON kubetasks.tasks (actor, id);
CREATE INDEX tasks_by_namespace ON kubetasks.tasks (kubetasks.task_namespace(schedule_name, object_ref), id)
    WHERE schedule_name IS NOT NULL OR object_ref IS NOT NULL;
