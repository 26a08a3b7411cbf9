"""Spans of enqueue and of each attempt, in one trace across processes: this process enqueues (its spans in the
SDK's in-memory exporter), a real worker process runs the attempts (its spans in its own in-memory exporter,
read back through the `t.spans` actor), and the W3C traceparent travels in the task row on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from waiting import wait_for
from workers import WorkerProcess

from kubetasks.worker import db, queue
from kubetasks.worker.settings import Settings

pytestmark = pytest.mark.slow

Start = Callable[..., WorkerProcess]


def finished(conn: db.Conn, task_id: int) -> queue.Task | None:
    task = queue.get_task(conn, task_id)
    return task if task.finished_at is not None else None


def worker_spans(conn: db.Conn) -> list[dict[str, Any]]:
    """The spans the worker process finished so far (the `t.spans` task's own span is still open then)."""
    task = queue.enqueue(conn, "t.spans", {}, validate=False)
    done = wait_for(lambda: finished(conn, task.id), timeout=30, what="the t.spans task")
    assert done.state == "successful", done.error
    return [s for s in done.result if s["name"] != "run t.spans"]


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_an_attempt_joins_the_trace_of_its_enqueue(conn: db.Conn, traced: Settings, exporter: InMemorySpanExporter,
                                                     start_worker: Start) -> None:
    with trace.get_tracer("the-application").start_as_current_span("handle request"):
        task = queue.enqueue(conn, "t.noop", {}, validate=False, queue="billing")
    enqueue = only(list(exporter.get_finished_spans()), "enqueue t.noop")
    trace_id, span_id = ids(enqueue)
    request = only(list(exporter.get_finished_spans()), "handle request")
    assert enqueue.parent is not None and enqueue.parent.span_id == request.get_span_context().span_id
    assert enqueue.kind == SpanKind.PRODUCER
    assert dict(enqueue.attributes or {}) == {"messaging.system": "kubetasks", "kubetasks.actor": "t.noop",
                                              "kubetasks.queue": "billing", "kubetasks.task.id": task.id,
                                              "kubetasks.task.created": True}
    flags = f"{enqueue.get_span_context().trace_flags:02x}"
    assert task.traceparent == f"00-{trace_id}-{span_id}-{flags}"  # stored with the task, as W3C writes it

    start_worker(queues=["billing", "default"])
    assert wait_for(lambda: finished(conn, task.id), timeout=30, what="the task").state == "successful"
    [run] = [s for s in worker_spans(conn) if s["name"] == "run t.noop"]
    assert (run["trace_id"], run["parent_id"]) == (trace_id, span_id)  # the enqueuer's trace, under its span
    assert run["kind"] == "CONSUMER"
    assert run["attributes"] == {"messaging.system": "kubetasks", "kubetasks.task.id": task.id,
                                 "kubetasks.actor": "t.noop", "kubetasks.queue": "billing", "kubetasks.attempt": 1,
                                 "kubetasks.state": "successful", "kubetasks.reason": "Succeeded"}
    assert run["status"] == "UNSET"


def test_each_attempt_has_its_span_and_failures_an_error_status(
        conn: db.Conn, traced: Settings, exporter: InMemorySpanExporter, start_worker: Start, tmp_path: Path) -> None:
    flaky = queue.enqueue(conn, "t.flaky", {"path": str(tmp_path / "tries"), "fail_times": 1}, validate=False)
    failing = queue.enqueue(conn, "t.fail", {}, validate=False)
    start_worker()
    for task in (flaky, failing):
        wait_for(lambda task=task: finished(conn, task.id), timeout=30, what=f"task {task.id}")
    spans = worker_spans(conn)
    tries = sorted((s for s in spans if s["name"] == "run t.flaky"), key=lambda s: s["attributes"]["kubetasks.attempt"])
    assert [(s["attributes"]["kubetasks.attempt"], s["attributes"]["kubetasks.state"], s["status"]) for s in tries] == [
        (1, "running", "ERROR"), (2, "successful", "UNSET")]
    assert tries[0]["description"] == "ValueError: boom 1"
    assert tries[0]["attributes"]["kubetasks.reason"] == "Retrying"
    enqueued = only(list(exporter.get_finished_spans()), "enqueue t.flaky")
    assert {(s["trace_id"], s["parent_id"]) for s in tries} == {ids(enqueued)}  # both attempts in one trace
    [failed] = [s for s in spans if s["name"] == "run t.fail"]
    assert (failed["attributes"]["kubetasks.state"], failed["status"], failed["description"]) == (
        "error", "ERROR", "bad input, do not retry")


def test_a_bulk_enqueue_is_one_span_whose_trace_every_attempt_joins(
        conn: db.Conn, traced: Settings, exporter: InMemorySpanExporter, start_worker: Start) -> None:
    assert queue.enqueue_many(conn, "t.noop", [{}] * 5, validate=False) == 5
    bulk = only(list(exporter.get_finished_spans()), "enqueue t.noop")
    assert (bulk.attributes or {})["kubetasks.tasks"] == 5
    trace_id, span_id = ids(bulk)
    rows = conn.execute("SELECT DISTINCT traceparent FROM kubetasks.tasks").fetchall()
    flags = f"{bulk.get_span_context().trace_flags:02x}"
    assert rows == [{"traceparent": f"00-{trace_id}-{span_id}-{flags}"}]
    start_worker()
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE state = 'successful'")
             .fetchone() == {"n": 5}, timeout=30, what="the five tasks")
    runs = [s for s in worker_spans(conn) if s["name"] == "run t.noop"]
    assert len(runs) == 5
    assert {(s["trace_id"], s["parent_id"]) for s in runs} == {(trace_id, span_id)}


def test_without_tracing_nothing_is_traced_or_stored(conn: db.Conn, settings: Settings,
                                                      exporter: InMemorySpanExporter, start_worker: Start) -> None:
    assert not settings.tracing.enabled
    task = queue.enqueue(conn, "t.noop", {}, validate=False)
    queue.enqueue_many(conn, "t.noop", [{}] * 3, validate=False)
    assert exporter.get_finished_spans() == ()
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.tasks WHERE traceparent IS NOT NULL").fetchone() == {
        "n": 0}
    start_worker()
    assert wait_for(lambda: finished(conn, task.id), timeout=30, what="the task").state == "successful"
    assert worker_spans(conn) == []  # the worker's SDK is configured, but kubetasks made no span


def test_an_attempt_stopped_at_its_time_limit_ends_its_span_with_the_timeout(
        conn: db.Conn, traced: Settings, exporter: InMemorySpanExporter, start_worker: Start, tmp_path: Path) -> None:
    task = queue.enqueue(conn, "t.busy", {"path": str(tmp_path / "busy")}, validate=False, max_retries=0,
                         time_limit=1)
    start_worker()
    assert wait_for(lambda: finished(conn, task.id), timeout=30, what="the timeout").reason == "TimedOut"
    [run] = [s for s in worker_spans(conn) if s["name"] == "run t.busy"]
    assert (run["attributes"]["kubetasks.state"], run["attributes"]["kubetasks.reason"], run["status"]) == (
        "error", "TimedOut", "ERROR")
    assert run["description"] == "time limit of 1s exceeded"


def test_a_task_enqueued_by_a_running_task_stays_in_its_trace(
        conn: db.Conn, traced: Settings, exporter: InMemorySpanExporter, start_worker: Start) -> None:
    parent = queue.enqueue(conn, "t.enqueue_child", {}, validate=False)
    trace_id, _ = ids(only(list(exporter.get_finished_spans()), "enqueue t.enqueue_child"))
    start_worker()
    done = wait_for(lambda: finished(conn, parent.id), timeout=30, what="the parent")
    assert done.state == "successful", done.error
    wait_for(lambda: finished(conn, int(done.result)), timeout=30, what="the child")
    spans = {s["name"]: s for s in worker_spans(conn)}
    run_parent, enqueue_child, run_child = (spans["run t.enqueue_child"], spans["enqueue t.noop"],
                                            spans["run t.noop"])
    assert enqueue_child["parent_id"] == run_parent["span_id"]  # enqueued while the parent's span was current
    assert run_child["parent_id"] == enqueue_child["span_id"]
    assert {run_parent["trace_id"], enqueue_child["trace_id"], run_child["trace_id"]} == {trace_id}
