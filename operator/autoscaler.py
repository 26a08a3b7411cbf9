"""One WorkerPool autoscaling pass: measure the queues, decide with `scaling`, patch the Deployment's
`/scale` subresource, report in `.status`.

The Kopf daemon of each WorkerPool calls `step` every `pollingIntervalSeconds`, or sooner when the
listener sees a task inserted on one of its queues. The recommendation history for the scale-down window
lives in the daemon (in memory), see `scaling.Recommendations`.

With the `kubetasks.dev/paused-replicas` annotation the target is set to that count and left there: the
queues are still measured for the status, nothing is recommended, and the history is forgotten so that,
once the annotation is removed, the window starts again from the count it held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from . import resources, scaling, status, store
from .runtime import Runtime

log = logging.getLogger(__name__)


def container_env(deployment: Mapping[str, Any], container: str | None) -> dict[str, str]:
    """Plain `value` env entries of the named (or first) container; `valueFrom` ones cannot be read here."""
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    chosen = next((c for c in containers if c.get("name") == container), None) if container else None
    if chosen is None and containers:
        chosen = containers[0]
    return {e["name"]: str(e["value"]) for e in (chosen or {}).get("env") or () if "value" in e}


def concurrency(spec: resources.WorkerPoolSpec, deployment: Mapping[str, Any]) -> int:
    if spec.concurrency_per_replica:
        return int(spec.concurrency_per_replica)
    return int(scaling.per_replica(container_env(deployment, spec.scale_target_ref.container)))


def step(rt: Runtime, body: Mapping[str, Any], memory: scaling.Recommendations,
         clock: float | None = None) -> dict[str, Any]:
    """Scale the pool's Deployment once; return the status written."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = resources.WorkerPoolSpec.model_validate(dict(body.get("spec") or {}))
    old = dict(body.get("status") or {})
    now = datetime.now(UTC)
    generation = meta.get("generation")
    target = spec.scale_target_ref.name
    deployment = rt.kube.get_deployment(namespace, target)
    if deployment is None:
        new = resources.WorkerPoolStatus(
            conditions=[status.condition("Ready", "False", "TargetNotFound", f"Deployment {target} does not exist",
                                         now, old.get("conditions") or (), generation)],
            observed_generation=generation).patch()
        if _patch(rt, namespace, name, old, new):
            rt.kube.event(dict(body), "Warning", "TargetNotFound", f"Deployment {target} does not exist")
        return new
    current = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    per = concurrency(spec, deployment)
    annotation = (meta.get("annotations") or {}).get(resources.PAUSED_REPLICAS_ANNOTATION)
    try:
        paused = scaling.parse_paused_replicas(annotation)
    except ValueError as exc:
        problem = f"annotation {resources.PAUSED_REPLICAS_ANNOTATION}: {exc}"
        new = resources.WorkerPoolStatus(
            conditions=[status.condition("Ready", "False", "InvalidAnnotation", problem, now,
                                         old.get("conditions") or (), generation)],
            observed_generation=generation).patch()
        if _patch(rt, namespace, name, old, new):
            rt.kube.event(dict(body), "Warning", "InvalidAnnotation", problem)
        return new
    with rt.connection() as conn:
        load = store.pool_load(conn, spec.queues)
    if paused is not None:
        memory.history.clear()  # resumed, the window starts again from the count held
        return _hold(rt, body, old, now, current, paused, per, load, spec)
    bounds = scaling.Bounds(min_replicas=spec.min_replicas, max_replicas=spec.max_replicas, per_replica=per,
                            stabilization=float(spec.scale_down_stabilization_seconds))
    decision = scaling.decide(time.monotonic() if clock is None else clock, current, load, bounds, memory)
    last_scale = _scale(rt, body, target, current, decision.desired, old, now,
                        f"{load.runnable} runnable and {load.running} running tasks, {per} per replica")
    before = old.get("conditions") or ()
    new = resources.WorkerPoolStatus(
        desired=decision.desired, current=decision.desired if decision.desired != current else current,
        queued=load.runnable, held=load.held, paused_replicas=None, running=load.running, concurrency=per,
        last_scale_time=last_scale,
        conditions=[
            status.condition("Ready", "True", decision.reason,
                             f"{decision.recommended} replica(s) recommended, {decision.floor} busy", now, before,
                             generation),
            _active(load, spec, now, before, generation),
        ],
        observed_generation=generation,
    ).patch()
    _patch(rt, namespace, name, old, new)
    return new


def _scale(rt: Runtime, body: Mapping[str, Any], target: str, current: int, replicas: int,
           old: Mapping[str, Any], now: datetime, why: str) -> Any:
    """Set the target's replicas if they differ, with a log line and an Event; returns lastScaleTime."""
    if replicas == current:
        return old.get("lastScaleTime")
    meta = body["metadata"]
    rt.kube.set_scale(meta["namespace"], target, replicas)
    message = f"Scaled {target} from {current} to {replicas}: {why}"
    log.info("WorkerPool %s/%s: %s", meta["namespace"], meta["name"], message)
    rt.kube.event(dict(body), "Normal", "Scaled", message)
    return now


def _active(load: scaling.Load, spec: resources.WorkerPoolSpec, now: datetime,
            before: Sequence[Mapping[str, Any]], generation: int | None) -> dict[str, Any]:
    """The Active condition: whether the pool's queues have tasks runnable or running, and how many."""
    active = load.runnable + load.running > 0
    held = f" ({load.held} more held back by queue controls)" if load.held else ""
    activity = f"{load.runnable} runnable{held}, {load.running} running on queues " + ", ".join(spec.queues)
    return status.condition("Active", "True" if active else "False", "TasksPending" if active else "Idle",
                            activity, now, before, generation)


def _patch(rt: Runtime, namespace: str, name: str, old: Mapping[str, Any], new: dict[str, Any]) -> bool:
    """Write the WorkerPool's status when it changed; whether it did."""
    if not status.changed(old, new):
        return False
    rt.kube.patch_status(resources.WORKERPOOL, namespace, name, new)
    return True


def _hold(rt: Runtime, body: Mapping[str, Any], old: Mapping[str, Any], now: datetime, current: int, replicas: int,
          per: int, load: scaling.Load, spec: resources.WorkerPoolSpec) -> dict[str, Any]:
    """Paused autoscaling: the target at exactly `replicas`, whatever the queues say."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    target = spec.scale_target_ref.name
    last_scale = _scale(rt, body, target, current, replicas, old, now,
                        f"held by the {resources.PAUSED_REPLICAS_ANNOTATION} annotation")
    before = old.get("conditions") or ()
    new = resources.WorkerPoolStatus(
        desired=replicas, current=replicas, queued=load.runnable, held=load.held, paused_replicas=replicas,
        running=load.running, concurrency=per, last_scale_time=last_scale,
        conditions=[
            status.condition("Ready", "True", "Paused",
                             f"autoscaling paused at {replicas} replica(s) by the "
                             f"{resources.PAUSED_REPLICAS_ANNOTATION} annotation; remove it to resume", now,
                             before, generation),
            _active(load, spec, now, before, generation),
        ],
        observed_generation=generation,
    ).patch()
    _patch(rt, namespace, name, old, new)
    return new
