"""What the operator last saw of its Schedules and TaskRuns, from Kopf's own watch: reads that cost no request.

Kopf indexes every Schedule and TaskRun it watches (`handlers.schedule_views` and `handlers.taskrun_views`,
both with `index_keys` below), from
the same watch streams it handles events from. Each entry is the object without its managedFields and
annotations, under ("Schedule" | "TaskRun", namespace, name), and a Schedule's runs also under ("children",
namespace, schedule), so a Schedule's TaskRuns are a lookup instead of a LIST and an unchanged status is a
comparison instead of a GET.

A view may lag the API server by the watch's delay, so it is only used to decide that nothing needs doing:
a status it shows equal to the wanted one is not written again, and a Schedule's children are taken from it.
Every write still starts from a fresh read (`Kube.get`) or tolerates a conflict (a child created twice gets
409 and the existing one, a child deleted twice gets 404). The worst a lag can do is one redundant request,
or a no-op skipped until the next pass that compares again.

Kopf runs no handler before all its indexes hold the first listing, so the views count as ready once a
handler has run; until then every caller reads the API server, as it would without views.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any

from . import resources

CHILDREN = "children"
_KEPT_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "labels", "ownerReferences",
                  "deletionTimestamp", "finalizers")


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the operator reads it: no managedFields or annotations (the bulk of a body; the trigger
    and backfill annotations are only read by the Kopf handlers, from the body Kopf hands them)."""
    meta = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {key: meta[key] for key in _KEPT_METADATA if key in meta},
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


def index_keys(body: Mapping[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Kopf's index entries for one Schedule or TaskRun."""
    view = trimmed(body)
    meta = view["metadata"]
    keys = {(str(body.get("kind")), meta.get("namespace") or "", meta.get("name") or ""): view}
    schedule = (meta.get("labels") or {}).get(resources.SCHEDULE_LABEL)
    if body.get("kind") == resources.TASKRUN.kind and schedule:
        keys[(CHILDREN, meta.get("namespace") or "", schedule)] = view
    return keys


class Views:
    """Read-only access to Kopf's index from any thread (Kopf updates it on its event loop; each read copies
    one entry's values in a single C-level step, so it never sees a half-updated store)."""

    def __init__(self) -> None:
        self._indexes: dict[str, Mapping[Any, Collection[dict[str, Any]]]] = {}
        self._ready = threading.Event()

    def attach(self, schedules: Mapping[Any, Collection[dict[str, Any]]],
               taskruns: Mapping[Any, Collection[dict[str, Any]]]) -> None:
        self._indexes = {resources.SCHEDULE.kind: schedules, resources.TASKRUN.kind: taskruns, CHILDREN: taskruns}

    def mark_ready(self) -> None:
        """A Kopf handler is running: the indexes hold at least the first listing."""
        if self._indexes and not self._ready.is_set():
            self._ready.set()

    @property
    def ready(self) -> bool:
        return bool(self._indexes) and self._ready.is_set()

    def _values(self, key: tuple[str, str, str]) -> list[dict[str, Any]] | None:
        if not self.ready:
            return None
        found = self._indexes[key[0]].get(key)
        return list(found) if found is not None else []

    def get(self, kind: resources.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as last watched, or None when it was not seen (or the views are not ready)."""
        found = self._values((kind.kind, namespace, name))
        return found[0] if found else None

    def children(self, namespace: str, schedule: str) -> list[dict[str, Any]] | None:
        """The TaskRuns labelled as `schedule`'s runs, or None when the views are not ready."""
        return self._values((CHILDREN, namespace, schedule))
