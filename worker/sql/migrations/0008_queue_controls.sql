-- kubetasks schema, version 8: queue controls (pause, concurrency limits per queue and per key, rate limits).
-- One row per queue that has a control; a queue without a row is unpaused and unlimited, and its workers
-- claim with task_claim as before. Limited claims (task_claim_limited, sql/queues.sql) lock the queue's row
-- FOR UPDATE for their transaction, so they are serialised per queue and count running tasks exactly. They
-- count through tasks_executing (the rescuer's index of attempts in flight): no index is added to tasks, so
-- claims and outcomes of unlimited queues write nothing more than before.
CREATE TABLE kubetasks.queues (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    -- Workers claim nothing from a paused queue; running tasks finish, queued ones wait.
    paused boolean NOT NULL DEFAULT false,
    -- At most this many tasks of the queue with a worker at once, across all workers; NULL: no limit.
    concurrency_limit integer CHECK (concurrency_limit >= 1),
    -- At most key_concurrency_limit running tasks per value of args->>concurrency_key (e.g. customer_id).
    concurrency_key text CHECK (length(concurrency_key) BETWEEN 1 AND 128),
    key_concurrency_limit integer CHECK (key_concurrency_limit >= 1),
    -- At most rate_limit starts per rate_period seconds: a token bucket of rate_limit tokens, refilled
    -- continuously, spent by the claims (rate_tokens as of rate_refilled_at).
    rate_limit integer CHECK (rate_limit >= 1),
    rate_period double precision CHECK (rate_period > 0),
    rate_tokens double precision NOT NULL DEFAULT 0,
    rate_refilled_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_key_with_limit CHECK ((concurrency_key IS NULL) = (key_concurrency_limit IS NULL)),
    CONSTRAINT queues_rate_with_period CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

-- Tell workers a queue's controls changed ("<queue>"); the claims' token updates are not a change.
CREATE FUNCTION kubetasks.notify_queue_control() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kubetasks_queue_control', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END
$$;
CREATE TRIGGER queues_notify_control AFTER INSERT OR DELETE ON kubetasks.queues
    FOR EACH ROW EXECUTE FUNCTION kubetasks.notify_queue_control();
CREATE TRIGGER queues_notify_control_change AFTER UPDATE ON kubetasks.queues
    FOR EACH ROW WHEN ((OLD.paused, OLD.concurrency_limit, OLD.concurrency_key, OLD.key_concurrency_limit,
                        OLD.rate_limit, OLD.rate_period)
                       IS DISTINCT FROM (NEW.paused, NEW.concurrency_limit, NEW.concurrency_key,
                                         NEW.key_concurrency_limit, NEW.rate_limit, NEW.rate_period))
    EXECUTE FUNCTION kubetasks.notify_queue_control();
