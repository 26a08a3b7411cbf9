"""Fixtures of the tracing tests: tracing enabled, this process's spans in the SDK's in-memory exporter (the
enqueue side), and real worker processes that load `span_capture` (the attempt side)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import workers
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kubetasks.worker.settings import Settings, get_settings

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def _provider() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry refuses to replace it
    return exporter


@pytest.fixture
def exporter(_provider: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    _provider.clear()
    yield _provider
    _provider.clear()


@pytest.fixture
def traced(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Tracing on, here and in the workers started after (they inherit the environment)."""
    monkeypatch.setenv("KUBETASKS_TRACING__ENABLED", "true")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()  # no later test may see these settings


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., workers.WorkerProcess]]:
    with workers.fleet(tmp_path, modules=("worker_actors", "span_capture"), paths=(HERE,)) as started:
        yield functools.partial(started.start, dsn)
