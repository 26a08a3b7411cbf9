"""What the operator last saw of its Schedules and TaskRuns, kept by a watch of its own: reads that cost no
request.

One thread per kind (`ViewWatch`) lists every object of the kind in the cluster, in pages, then watches from
that listing's version and applies each change; when the watch cannot resume (410 Gone, an error) it lists
again, and the new listing replaces the old one whole, so an object deleted during a gap does not linger.
Each view is the object without its managedFields, annotations and (for TaskRuns) spec, under its kind,
namespace and name; a Schedule's runs are also found by (namespace, schedule label), so a Schedule's TaskRuns
are a lookup instead of a LIST and an unchanged status is a comparison instead of a GET.

A view may lag the API server by the watch's delay, so it is only used to decide that nothing needs doing:
a status it shows equal to the wanted one is not written again, and a Schedule's children are taken from it.
Every write still starts from a fresh read (`Kube.get`) or tolerates a conflict (a child created twice gets
409 and the existing one, a child deleted twice gets 404). The worst a lag can do is one redundant request,
or a no-op skipped until the next pass that compares again. Until a kind's first listing is in, every read
of it goes to the API server, as it does when the operator watches chosen namespaces only (no views then:
they would need a watch per namespace).

Kopf's own indexes would give the same data from Kopf's watch, but Kopf holds every handler until each
object of an indexed kind is indexed, waking every waiting object at each one: quadratic in the number of
objects at start-up (3,000 objects kept its event loop busy for 100 s before the first handler ran).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from . import resources
from .kube import Kube, WatchExpired

log = logging.getLogger(__name__)
WATCH_SECONDS = 300  # the server ends a watch after this; it resumes from the last version seen
RETRY_SECONDS = 5.0
_KEPT_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "labels", "ownerReferences",
                  "creationTimestamp", "deletionTimestamp", "finalizers")
Key = tuple[str, str]  # namespace, name


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the operator reads it from a view: no managedFields or annotations (the bulk of a body;
    the trigger and backfill annotations are only read by the Kopf handlers, from the body Kopf hands them),
    and no spec for a TaskRun (it is read only when the TaskRun is handled, from Kopf's body)."""
    meta = body.get("metadata") or {}
    view = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {key: meta[key] for key in _KEPT_METADATA if key in meta},
            "status": dict(body.get("status") or {})}
    if body.get("kind") != resources.TASKRUN.kind:
        view["spec"] = dict(body.get("spec") or {})
    return view


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def schedule_of(view: Mapping[str, Any]) -> str | None:
    """The Schedule a TaskRun is labelled as a run of, if any."""
    label: str | None = ((view.get("metadata") or {}).get("labels") or {}).get(resources.SCHEDULE_LABEL)
    return label


class Views:
    """The views of both kinds, read from any thread; one lock, held only for dictionary steps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}  # by kind, once its first listing is in
        self._children: dict[Key, dict[str, dict[str, Any]]] = {}  # (namespace, schedule) -> name -> TaskRun

    def ready(self, kind: resources.Kind) -> bool:
        return kind.kind in self._objects

    def get(self, kind: resources.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as last watched, or None when it was not seen (or its kind's views are not ready)."""
        with self._lock:
            found = self._objects.get(kind.kind)
            return found.get((namespace, name)) if found is not None else None

    def every(self, kind: resources.Kind) -> list[dict[str, Any]]:
        """Every watched object of `kind` (none when its views are not ready)."""
        with self._lock:
            return list((self._objects.get(kind.kind) or {}).values())

    def children(self, namespace: str, schedule: str) -> list[dict[str, Any]] | None:
        """The TaskRuns labelled as `schedule`'s runs, or None when the TaskRun views are not ready."""
        with self._lock:
            if resources.TASKRUN.kind not in self._objects:
                return None
            return list(self._children.get((namespace, schedule), {}).values())

    def replace(self, kind: resources.Kind, listed: Iterable[dict[str, Any]]) -> None:
        """A whole listing of `kind`, each object `trimmed` already: what it lacks is gone."""
        views = {_key(view): view for view in listed}
        with self._lock:
            self._objects[kind.kind] = views
            if kind is resources.TASKRUN:
                self._children = {}
                for key, view in views.items():
                    self._link(key, view)

    def apply(self, kind: resources.Kind, type_: str, body: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a kind whose listing is in."""
        key, view = _key(body), trimmed(body)
        with self._lock:
            objects = self._objects.get(kind.kind)
            if objects is None:
                return
            old = objects.pop(key, None) if type_ == "DELETED" else objects.get(key)
            if kind is resources.TASKRUN and old is not None:
                self._children.get((key[0], schedule_of(old) or ""), {}).pop(key[1], None)
            if type_ != "DELETED":
                objects[key] = view
                if kind is resources.TASKRUN:
                    self._link(key, view)

    def _link(self, key: Key, view: dict[str, Any]) -> None:
        schedule = schedule_of(view)
        if schedule:
            self._children.setdefault((key[0], schedule), {})[key[1]] = view


class ViewWatch(threading.Thread):
    """Keeps one kind's views: a LIST of the cluster, then a WATCH from its version; a LIST again on a gap."""

    def __init__(self, kube: Kube, views: Views, kind: resources.Kind) -> None:
        super().__init__(name=f"kubetasks-views-{kind.plural}", daemon=True)
        self.kube, self.views, self.kind = kube, views, kind
        self.stopping = threading.Event()
        self._response: Any = None

    def stop(self) -> None:
        self.stopping.set()
        response = self._response
        if response is not None:
            response.shutdown()  # ends the blocking read of the watch at once

    def _opened(self, response: Any) -> None:
        self._response = response

    def _list(self) -> str:
        listed: list[dict[str, Any]] = []
        version = self.kube.list_everywhere(self.kind, lambda body: listed.append(trimmed(body)))
        self.views.replace(self.kind, listed)
        return version

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                version = self._list()
                while not self.stopping.is_set():
                    for type_, body in self.kube.watch_everywhere(self.kind, version, WATCH_SECONDS, self._opened):
                        version = (body.get("metadata") or {}).get("resourceVersion") or version
                        if type_ != "BOOKMARK":
                            self.views.apply(self.kind, type_, body)
            except WatchExpired:
                log.info("the watch of %s expired; listing them again", self.kind.plural)
            except Exception:
                if self.stopping.is_set():
                    return
                log.warning("the watch of %s failed; listing them again in %.0f s", self.kind.plural,
                            RETRY_SECONDS, exc_info=True)
                self.stopping.wait(RETRY_SECONDS)
