-- kubetasks schema, version 10: the actor index holds finished tasks only.
-- A task's row is written three times (enqueue, claim, outcome) and none of those updates can be HOT (each changes
-- columns the partial indexes test), so every index whose predicate a version meets gets an entry per version:
-- the full (actor, id) index took three text-keyed entries per task, about a sixth of the server's CPU per no-op
-- task (bench/profile.py). Finished rows, the bulk of a big table, keep their index, written once at the outcome;
-- live rows by actor are read through tasks_unfinished (the task list and the counts query the two halves
-- apart, see queue.TaskFilter.branches). Built in the migration's transaction like 0003's indexes: writes to the table
-- wait for it (seconds at millions of rows).
DROP INDEX kubetasks.tasks_by_actor;
CREATE INDEX tasks_finished_by_actor ON kubetasks.tasks (actor, id) WHERE finished_at IS NOT NULL;
