"""Schedules kept in step without polling each one: one thread, one cheap pass per interval.

A run and its state changes reach its Schedule through the listener, which syncs every Schedule a notified
row belongs to. What no task row announces shows in the schedule's own row: a tick skipped (next_run moves
on), a pause or resume from the CLI, a spec stored by another replica. Each pass reads those columns of every
operator-managed row in one query and syncs only the Schedules whose row differs from the last pass (a new
row was just synced by the Kopf handler that stored it), so an idle cluster costs the API server nothing
however many Schedules it holds. As a safety net for changes made behind the operator's back (a TaskRun
deleted by hand), every pass also syncs the next slice of all Schedules in turn, sized so each is synced
once per `schedule_full_resync_interval`, with one LIST of TaskRuns per namespace (and per RESYNC_CHUNK
Schedules) rather than one per Schedule. The Schedules themselves, and the TaskRuns of those whose row
changed, come from the watch (`views`): an idle pass costs at most a few LISTs.

Each pass also reconciles TaskRuns that the watch shows with neither a task nor a refusal long after their
creation (UNHANDLED_AFTER): Kopf leaves an object whose patch met a newer version (422) until its next event,
and a TaskRun that nobody changes has none (14 of 20,000 created at once were left so).

Start-up needs no pass of its own: Kopf's resume handlers reconcile every Schedule then; the first pass only
records what the rows hold.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from . import resources, schedules, store, taskruns, views
from .runtime import Runtime

log = logging.getLogger(__name__)
UNHANDLED_AFTER = timedelta(minutes=2)  # a TaskRun still without a task then was missed, not just queued in Kopf
UNHANDLED_PER_PASS = 50
RESYNC_CHUNK = 50  # Schedules per LIST of the safety net (a label selector "schedule in (...)" of ~3 KB)


class ScheduleSweep(threading.Thread):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="kubetasks-schedule-sweep", daemon=True)
        self.rt = rt
        self.stopping = threading.Event()
        self.seen: dict[str, tuple[object, ...]] | None = None
        self.cursor = 0  # where the next slice of the round-robin resync starts
        self.synced = 0  # Schedules synced, for tests and logs

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        interval = self.rt.operator.schedule_sync_interval.total_seconds()
        while True:
            try:
                self.sweep()
                self.unhandled()
            except Exception:  # the database or the API server is away: the next pass catches up
                log.exception("schedule sweep failed")
            if self.stopping.wait(interval):
                return

    def unhandled(self, now: datetime | None = None) -> list[str]:
        """Reconcile TaskRuns the watch shows with no task and no refusal UNHANDLED_AFTER after creation;
        returns their "<namespace>/<name>"."""
        cutoff = resources.rfc3339((now or datetime.now(UTC)) - UNHANDLED_AFTER)
        missed = [view for view in self.rt.views.every(resources.TASKRUN)
                  if not (view.get("status") or {}).get("taskId")
                  and not (view.get("status") or {}).get("conditions")
                  and not view["metadata"].get("deletionTimestamp")
                  and (view["metadata"].get("creationTimestamp") or cutoff) < cutoff]
        done = []
        for view in missed[:UNHANDLED_PER_PASS]:
            namespace, name, uid = resources.identity(view)
            try:
                body = self.rt.kube.get(resources.TASKRUN, namespace, name)  # with its spec, as Kopf would hand it
                if body is not None and body["metadata"].get("uid") == uid:
                    log.warning("TaskRun %s/%s was not handled since its creation; reconciling it", namespace, name)
                    taskruns.reconcile(self.rt, body)
                    done.append(f"{namespace}/{name}")
            except Exception:
                log.exception("could not reconcile TaskRun %s/%s", namespace, name)
        return done

    def sweep(self) -> list[str]:
        """One pass; returns the names ("<namespace>/<name>") synced."""
        with self.rt.connection() as conn:
            marks = store.schedule_marks(conn)
        seen, self.seen = self.seen, marks
        if seen is None:
            return []
        # A name new since the last pass was just stored by a Kopf handler, which synced it then.
        changed = [name for name, mark in marks.items() if name in seen and seen[name] != mark]
        for key in changed:  # from what the watch last showed of them (see `views`)
            self._sync(key)
        picked = self._slice(sorted(marks), set(changed))
        for namespace, names in itertools.groupby(picked, key=lambda key: key.partition("/")[0]):
            self._resync(namespace, [key.partition("/")[2] for key in names])
        return changed + picked

    def _sync(self, key: str, listed: list[dict[str, Any]] | None = None) -> None:
        namespace, _, name = key.partition("/")
        try:
            schedules.sync(self.rt, namespace, name, listed=listed)
            self.synced += 1
        except Exception:
            log.exception("could not sync Schedule %s", key)

    def _resync(self, namespace: str, names: list[str]) -> None:
        """The safety net reads the API server itself, not the views (an object deleted while the watch was
        down may linger there): one LIST of TaskRuns per RESYNC_CHUNK Schedules of a namespace."""
        for first in range(0, len(names), RESYNC_CHUNK):
            chunk = names[first:first + RESYNC_CHUNK]
            selector = f"{resources.SCHEDULE_LABEL} in ({','.join(chunk)})"
            try:
                listed = self.rt.kube.list_objects(resources.TASKRUN, namespace, selector)
            except Exception:
                log.exception("could not list the TaskRuns of %d Schedules in %s", len(chunk), namespace)
                continue
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chunk}
            for taskrun in listed:
                label = views.schedule_of(taskrun)
                if label in runs:
                    runs[label].append(taskrun)
            for name in chunk:
                self._sync(f"{namespace}/{name}", runs[name])

    def _slice(self, names: list[str], taken: set[str]) -> list[str]:
        if not names:
            return []
        operator = self.rt.operator
        share = operator.schedule_sync_interval / operator.schedule_full_resync_interval
        size = min(len(names), math.ceil(len(names) * share))
        start = self.cursor % len(names)
        self.cursor = start + size
        picked = (names + names)[start:start + size]
        return [name for name in picked if name not in taken]
