"""Imported by the tracing tests' worker processes (KUBETASKS_WORKER__MODULES): the OpenTelemetry SDK with its
in-memory exporter as the global tracer provider, as an application would configure it, and an actor that
returns the spans this process finished so far, so the test reads them from the task's result."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kubetasks.worker.registry import actor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


def as_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {"name": span.name, "kind": span.kind.name, "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
            "attributes": dict(span.attributes or {}), "status": span.status.status_code.name,
            "description": span.status.description}


@actor(name="t.spans")
def spans() -> list[dict[str, Any]]:
    return [as_json(span) for span in exporter.get_finished_spans()]


@actor(name="t.enqueue_child")
def enqueue_child() -> int:
    """Enqueues a t.noop from inside its attempt: the child's enqueue span nests under this attempt's span."""
    from kubetasks.worker import db, queue, settings

    with db.connect(settings.get_settings().database) as conn:
        return queue.enqueue(conn, "t.noop", {}, validate=False).id
