"""Kopf registrations, and nothing else: each handler hands the object to `taskruns`, `schedules` or
`autoscaler`. The only module importing kopf.

Run it with `kopf run -m kubetasks.operator.handlers --all-namespaces` (add `--liveness
http://0.0.0.0:8080/healthz` for probes). The database URL and actor modules come from the worker's
settings (`KUBETASKS_DATABASE__URL`, `KUBETASKS_WORKER__MODULES`), the rest from `KUBETASKS_OPERATOR__*`.
Both are read once, in the startup handler, and travel in the `Runtime` kept in Kopf's memo; importing
this module reads nothing. Schedules have no per-object timer: the listener and one sweep thread (see
`sweep`) sync those whose rows changed, so an idle Schedule costs the API server nothing.

Kopf keeps its handler progress in `status.kopf` rather than annotations, so the operator writes only
`.status` and its finalizer (`kubetasks.dev/finalizer`) on the objects users own. Kopf peering is not used:
every write is idempotent and deduplicated in the database (see `store`), so a second replica cannot
create a second task or run; it only duplicates work and, at worst, an Event.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetasks.worker.settings import Settings

from . import autoscaler, config, firing, listener, resources, scaling, schedules, sweep, taskruns, views
from .runtime import Runtime

FINALIZER = f"{resources.GROUP}/finalizer"
_SCHEDULES = (resources.GROUP, resources.VERSION, resources.SCHEDULE.plural)
_TASKRUNS = (resources.GROUP, resources.VERSION, resources.TASKRUN.plural)
_POOLS = (resources.GROUP, resources.VERSION, resources.WORKERPOOL.plural)
CONSISTENCY_TIMEOUT = 60.0


def _rt(memo: Any) -> Runtime:
    rt: Runtime = memo["runtime"]
    return rt


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress",
                                                                      touch_field="status.kopf.dummy")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.lastHandled")
    settings.posting.level = logging.WARNING  # our own Events say what happened; Kopf's only on trouble
    settings.peering.standalone = True
    # How long Kopf waits for the watch event of its own last patch before it handles an object's older body.
    # Past this (5 s by default) it takes that body, which lacks the handled mark, for a new object and runs
    # the create handler again: under load every late event became more load (in one slowed run, 5,232 create
    # handlings for 3,000 new objects).
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT
    rt = Runtime.create(Settings(), config.OperatorSettings())
    memo["runtime"] = rt
    if settings.peering.clusterwide:  # views of chosen namespaces would need a watch per namespace
        for kind in (resources.SCHEDULE, resources.TASKRUN):
            rt.start_thread(views.ViewWatch(rt.kube, rt.views, kind))
    rt.start_thread(listener.Listener(rt))
    rt.start_thread(sweep.ScheduleSweep(rt))  # Schedules whose row changed; no per-Schedule timer
    if rt.operator.run_scheduler:
        rt.start_thread(firing.Firing(rt))


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt = memo.get("runtime")
    if rt is not None:
        rt.close()


# -- Schedule ---------------------------------------------------------------------------------------------


@kopf.on.resume(*_SCHEDULES)
@kopf.on.create(*_SCHEDULES)
@kopf.on.update(*_SCHEDULES)
def schedule_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    schedules.reconcile(_rt(memo), body)


@kopf.on.delete(*_SCHEDULES)
def schedule_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    schedules.forget(_rt(memo), body)



# -- TaskRun ----------------------------------------------------------------------------------------------


@kopf.on.resume(*_TASKRUNS)
@kopf.on.create(*_TASKRUNS)
@kopf.on.update(*_TASKRUNS)
def taskrun_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    taskruns.reconcile(_rt(memo), body)


@kopf.on.delete(*_TASKRUNS)
def taskrun_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    taskruns.forget(_rt(memo), body)


# -- WorkerPool -------------------------------------------------------------------------------------------


@kopf.daemon(*_POOLS, cancellation_timeout=5.0)
def workerpool_autoscaler(body: kopf.Body, namespace: str | None, name: str, memo: Any, stopped: kopf.DaemonStopped,
                          logger: kopf.Logger, **_: Any) -> None:
    rt = _rt(memo)
    memory = scaling.Recommendations()
    key = f"{namespace}/{name}"
    try:
        while not stopped:
            spec = body.get("spec") or {}
            wake = rt.wakeups.register(key, frozenset(spec.get("queues") or ("default",)))
            try:
                autoscaler.step(rt, body, memory)
            except Exception as exc:  # keep scaling on the next pass; the cause is in the log
                logger.exception(f"autoscaling failed: {exc}")
            rt.wakeups.wait(wake, float(spec.get("pollingIntervalSeconds") or 10), lambda: bool(stopped))
    finally:
        rt.wakeups.unregister(key)
