-- kubetasks schema, version 2: the Schedule fields 0001 had no column for.
-- History limits are applied by the scheduler (older finished runs of a schedule are deleted);
-- retry_backoff is copied onto each run (tasks.retry_backoff), whose retries then wait that long first.
ALTER TABLE kubetasks.schedules
    ADD COLUMN retry_backoff double precision CHECK (retry_backoff > 0),
    ADD COLUMN successful_runs_history_limit integer NOT NULL DEFAULT 3
        CHECK (successful_runs_history_limit >= 0),
    ADD COLUMN failed_runs_history_limit integer NOT NULL DEFAULT 1
        CHECK (failed_runs_history_limit >= 0);
