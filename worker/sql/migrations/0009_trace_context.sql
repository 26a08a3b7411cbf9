-- kubetasks schema, version 9: the W3C trace context of the enqueue, so a task's attempts join its trace.
-- Written by enqueue when tracing is on (worker/spans.py), NULL otherwise; the claim returns it to the worker.
ALTER TABLE kubetasks.tasks ADD COLUMN traceparent text
    CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
