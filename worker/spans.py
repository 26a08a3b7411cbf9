"""OpenTelemetry spans of kubetasks: one for each enqueue, one for each attempt, in one trace.

Loaded only through `tracing.get` when tracing is enabled (the `tracing` extra); the only module that imports
OpenTelemetry (.importlinter). Spans go to the global tracer provider, which the application configures (SDK,
exporter, sampler); kubetasks only makes them.

- enqueue: a PRODUCER span "enqueue <actor>" around the insert. Its W3C `traceparent` is stored on the task row
  (column `traceparent`, migration 0009), so the attempt joins the enqueuer's trace in whichever process or
  machine runs it. `enqueue_many`: one span for the batch, its traceparent on every row.
- attempt: a CONSUMER span "run <actor>", child of the stored traceparent (a root without one). It is current
  while the actor runs, so the actor's own spans and the tasks it enqueues nest under it, and it ends when the
  outcome is handed over, whoever decided it (the task thread, or the watchdog at a time limit or cancel), with
  the outcome's state; a failed attempt (retried or not) has ERROR status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from contextvars import Token

    from .executor import Execute, ExecuteAsync, Job, OutcomeSink, TaskThread
    from .policies import Outcome

TRACER_NAME: Final = "kubetasks"
# Attribute names (the messaging ones from OpenTelemetry's semantic conventions).
SYSTEM: Final = "messaging.system"
TASK_ID: Final = "kubetasks.task.id"
CREATED: Final = "kubetasks.task.created"  # False: a dedup key returned a live task instead
TASKS: Final = "kubetasks.tasks"  # rows of one enqueue_many
ACTOR: Final = "kubetasks.actor"
QUEUE: Final = "kubetasks.queue"
ATTEMPT: Final = "kubetasks.attempt"
STATE: Final = "kubetasks.state"
REASON: Final = "kubetasks.reason"
FAILED_STATES: Final = ("error", "running")  # an outcome of 'running' is a failed attempt waiting for its retry


class Enqueueing:
    """The span of one enqueue, and the traceparent to store on its rows (None when the span is not sampled)."""

    def __init__(self, span: Span, traceparent: str | None) -> None:
        self.span = span
        self.traceparent = traceparent

    def inserted(self, task_id: int, created: bool = True) -> None:
        self.span.set_attribute(TASK_ID, task_id)
        self.span.set_attribute(CREATED, created)

    def counted(self, tasks: int) -> None:
        self.span.set_attribute(TASKS, tasks)


def split_trace(trace_column: str | None) -> tuple[str | None, str | None]:
    """(queue, traceparent) of task_claim's last column: '<queue> <traceparent>' for a traced task, else NULL."""
    if not trace_column:
        return None, None
    queue, _, traceparent = trace_column.partition(" ")
    return queue, traceparent or None


class Tracing:
    def __init__(self) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME)
        self.propagator = TraceContextTextMapPropagator()
        self.open: dict[int, Span] = {}  # attempt spans by task id, until their outcome is handed over

    # -- enqueue ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def enqueue(self, actor: str, queue: str) -> Iterator[Enqueueing]:
        with self.tracer.start_as_current_span(f"enqueue {actor}", kind=SpanKind.PRODUCER, attributes={
                SYSTEM: TRACER_NAME, ACTOR: actor, QUEUE: queue}) as span:
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)  # from the current context, which holds this span
            yield Enqueueing(span, carrier.get("traceparent"))

    # -- attempts --------------------------------------------------------------------------------------------
    def around(self, execute: Execute) -> Execute:
        """The executor's `execute`, running each attempt inside its span."""

        def execute_traced(thread: TaskThread, job: Job) -> None:
            token = self._open(job)
            try:
                execute(thread, job)
            finally:
                self._close(job, token)

        return execute_traced

    def around_async(self, execute: ExecuteAsync) -> ExecuteAsync:
        """The same for the attempts of async actors."""

        async def execute_traced(job: Job) -> None:
            token = self._open(job)
            try:
                await execute(job)
            finally:
                self._close(job, token)

        return execute_traced

    def _open(self, job: Job) -> Token[otel_context.Context] | None:
        """Start the attempt's span and make it current; None when the attempt was finalised before it started
        (cancelled, timed out): no attempt to trace."""
        if job.done:
            return None
        queue, traceparent = split_trace(job.trace)
        parent = self.propagator.extract({"traceparent": traceparent}) if traceparent else otel_context.Context()
        attributes: dict[str, str | int] = {SYSTEM: TRACER_NAME, TASK_ID: job.task_id, ACTOR: job.actor,
                                            ATTEMPT: job.attempt}
        if queue:
            attributes[QUEUE] = queue
        span = self.tracer.start_span(f"run {job.actor}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes)
        self.open[job.task_id] = span
        return otel_context.attach(trace.set_span_in_context(span))

    def _close(self, job: Job, token: Token[otel_context.Context] | None) -> None:
        if token is None:
            return
        otel_context.detach(token)
        unended = self.open.pop(job.task_id, None)  # its outcome came before the span was opened
        if unended is not None:
            unended.end()

    def ending(self, sink: OutcomeSink) -> OutcomeSink:
        """The executor's outcome sink, ending the attempt's span with the outcome first."""

        def sink_traced(job: Job, outcome: Outcome) -> None:
            span = self.open.pop(job.task_id, None)
            if span is not None:
                finish(span, outcome)
            sink(job, outcome)

        return sink_traced


def finish(span: Span, outcome: Outcome) -> None:
    span.set_attribute(STATE, outcome.state)
    span.set_attribute(REASON, outcome.reason)
    if outcome.state in FAILED_STATES:
        message = (outcome.error or outcome.reason).splitlines()
        span.set_status(Status(StatusCode.ERROR, message[0] if message else outcome.reason))
    span.end()
