"""What every part of the running operator shares: settings, the connection pool, the API client, locks,
and the wake-ups that let a new task reach a WorkerPool's autoscaler before its next poll.

Kopf handlers, timers and daemons run on Kopf's worker threads; the database listener and the scheduler
run on threads of their own. They meet on one object per TaskRun or Schedule at a time through
`StripedLocks`, so a status is never computed from one read and written over a newer one by another
thread, and an Event for a transition is posted once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg_pool import ConnectionPool

from kubetasks.worker import db, protocol, registry
from kubetasks.worker.db import Conn
from kubetasks.worker.settings import Settings

from . import config
from .kube import Kube
from .views import Views

log = logging.getLogger(__name__)


class StripedLocks:
    """Per-object mutual exclusion with bounded memory: a fixed set of locks per family, chosen by hash.

    Each family ("schedules", "taskruns") has its own stripes and a Schedule's lock may be held while taking
    a TaskRun's, never the reverse, so two objects sharing a stripe can never deadlock.
    """

    def __init__(self, stripes: int = 64) -> None:
        self._stripes = stripes
        self._families: dict[str, list[threading.RLock]] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, family: str, *key: str) -> Iterator[None]:
        with self._guard:
            locks = self._families.setdefault(family, [threading.RLock() for _ in range(self._stripes)])
        with locks[hash(key) % self._stripes]:
            yield


class Wakeups:
    """Events the autoscaler daemons wait on, set when a task is enqueued on one of their queues."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, tuple[frozenset[str], threading.Event]] = {}

    def register(self, key: str, queues: frozenset[str]) -> threading.Event:
        with self._lock:
            event = self._waiters[key][1] if key in self._waiters else threading.Event()
            self._waiters[key] = (queues, event)
            return event

    def unregister(self, key: str) -> None:
        with self._lock:
            self._waiters.pop(key, None)

    def wake(self, queue: str) -> None:
        with self._lock:
            for queues, event in self._waiters.values():
                if queue in queues:
                    event.set()

    @staticmethod
    def wait(event: threading.Event, timeout: float, stopped: Callable[[], bool], slice_: float = 0.5) -> bool:
        """Wait until woken (True), `timeout` passes or `stopped()` (False); clears the event."""
        waited = 0.0
        while waited < timeout and not stopped():
            if event.wait(min(slice_, timeout - waited)):
                event.clear()
                return True
            waited += slice_
        return False


class LiveWorkflows:
    """Mirrored tasks whose workflow is still running, each with the progress last mirrored of it.

    A workflow's children move its steps on without touching the mirrored row (which may have finished long
    before: a Schedule's actor starts the workflow and returns), so no notification names that row. The
    listener re-reads these rows on a timer instead, all in one query, and mirrors only those that moved.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[Any, ...]] = {}

    @staticmethod
    def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["state"], row["attempts"], row.get("workflow_state"),
                json.dumps(row.get("workflow_steps"), sort_keys=True))

    def note(self, row: Mapping[str, Any]) -> None:
        """A row was just mirrored: watch it while its workflow runs, forget it once that ended."""
        with self._lock:
            if row.get("workflow_state") in protocol.LIVE_STATES:
                self._seen[row["id"]] = self._key(row)
            else:
                self._seen.pop(row["id"], None)

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._seen)

    def moved(self, asked: Iterable[int], rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Of the rows read for `asked`, those not mirrored as they are now; asked ids no longer found (purged)
        are forgotten."""
        rows = list(rows)
        with self._lock:
            for gone in set(asked) - {row["id"] for row in rows}:
                self._seen.pop(gone, None)
            return [row for row in rows if row["id"] in self._seen and self._seen[row["id"]] != self._key(row)]

    def settle(self, row: Mapping[str, Any]) -> None:
        """After a mirror attempt: a row that was not noted as it is now has no TaskRun left; forget it."""
        with self._lock:
            if self._seen.get(row["id"]) not in (None, self._key(row)):
                del self._seen[row["id"]]


@dataclass
class Runtime:
    settings: Settings
    operator: config.OperatorSettings
    pool: ConnectionPool[Any]
    kube: Kube
    locks: StripedLocks = field(default_factory=StripedLocks)
    wakeups: Wakeups = field(default_factory=Wakeups)
    workflows: LiveWorkflows = field(default_factory=LiveWorkflows)
    views: Views = field(default_factory=Views)
    threads: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, operator: config.OperatorSettings, api: Kube | None = None) -> Runtime:
        """Everything the operator shares, from settings the caller built (Kopf's startup handler, a test)."""
        if operator.validate_actors:
            registry.load_modules(settings.worker.modules)
        pool = db.pool(settings.database, max_size=operator.pool_size, application_name="kubetasks-operator")
        return cls(settings=settings, operator=operator, pool=pool, kube=api or Kube())

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        with self.pool.connection() as conn:
            yield cast(Conn, conn)

    def start_thread(self, thread: Any) -> None:
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        for thread in self.threads:
            thread.stop()
        for thread in self.threads:
            thread.join(timeout=10)
        self.pool.close()
