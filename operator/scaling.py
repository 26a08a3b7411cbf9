"""WorkerPool replica maths: pure, with the clock passed in, so every rule is tested exactly.

desired = clamp(ceil((runnable + running) / concurrency per replica), min, max), where only tasks that can run
*now* count (a task due later, or waiting out a retry backoff, needs no worker yet; nor does one that a queue's
pause or limits hold back: see `Load`). Scaling up happens at
once; scaling down follows the HPA's stabilization window: the target is the highest recommendation made
during the last `window` seconds, so a queue that empties for a moment does not shed workers that are about
to be needed again. Whatever happens, replicas never drop below what the tasks being executed occupy,
because removing their worker would interrupt them (the rescuer would retry them, wasting the work).

With min 0 a pool scales to zero when idle; the first runnable task makes the recommendation at least 1,
and up-scaling ignores the window, so it comes back at once.

Paused replicas (the WorkerPool's `kubetasks.dev/paused-replicas` annotation, like KEDA's
`autoscaling.keda.sh/paused-replicas`) hold the target at a fixed count and skip all of the above, so
"scale the workers down, flush, scale up" is not undone by the autoscaler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PROCESSES = 1
DEFAULT_THREADS = 4
PROCESSES_ENV = "KUBETASKS_WORKER__PROCESSES"
THREADS_ENV = "KUBETASKS_WORKER__THREADS"


@dataclass(frozen=True)
class Load:
    """Tasks of the pool's queues: runnable now that may start (waiting for a worker), being executed, and
    runnable but held back by a queue's pause or limits (not counted: more workers would not run them).
    For a limited queue at most its free concurrency slots, its keys' free slots and its rate limit (starts per
    period) count as runnable."""

    runnable: int
    running: int
    held: int = 0


@dataclass(frozen=True)
class Bounds:
    min_replicas: int
    max_replicas: int
    per_replica: int
    stabilization: float  # seconds


@dataclass
class Recommendations:
    """The recommendations of the last window, oldest first; one per WorkerPool, kept in memory.

    After an operator restart the history is empty: `seed` records the current replica count as if it had
    just been recommended, so a restart never causes an early scale-down.
    """

    history: list[tuple[float, int]] = field(default_factory=list)

    def seed(self, now: float, current: int) -> None:
        if not self.history:
            self.history.append((now, current))

    def add(self, now: float, value: int, window: float) -> int:
        """Record `value`; return the highest recommendation still inside the window."""
        self.history = [(t, v) for t, v in self.history if now - t < window]
        self.history.append((now, value))
        return max(v for _, v in self.history)


@dataclass(frozen=True)
class Decision:
    desired: int
    recommended: int  # before the stabilization window
    floor: int  # replicas the running tasks occupy
    reason: str


def per_replica(env: Mapping[str, str]) -> int:
    """Concurrency of one replica from its container env: PROCESSES x THREADS (defaults 1 and 4).

    Values that are missing, not plain integers (e.g. taken from a Secret) or below 1 fall back to the
    worker's defaults, like the worker's own settings would not: better a rough guess than no scaling.
    """

    def number(name: str, default: int) -> int:
        try:
            value = int(env.get(name, default))
        except (TypeError, ValueError):
            return default
        return value if value >= 1 else default

    return number(PROCESSES_ENV, DEFAULT_PROCESSES) * number(THREADS_ENV, DEFAULT_THREADS)


def parse_paused_replicas(value: str | None) -> int | None:
    """The replica count a paused-replicas annotation holds the target at; None when absent."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{value!r} is not a replica count (write a whole number of at least 0, e.g. \"0\"; "
                         "remove the annotation to resume autoscaling)")
    return int(text)


def recommend(load: Load, bounds: Bounds) -> tuple[int, int]:
    """(replicas the load needs within the bounds, replicas the running tasks occupy)."""
    per = max(1, bounds.per_replica)
    wanted = math.ceil((max(0, load.runnable) + max(0, load.running)) / per)
    floor = math.ceil(max(0, load.running) / per)
    return clamp(wanted, bounds), clamp(floor, bounds)


def clamp(value: int, bounds: Bounds) -> int:
    return max(bounds.min_replicas, min(bounds.max_replicas, value))


def decide(now: float, current: int, load: Load, bounds: Bounds, memory: Recommendations) -> Decision:
    """The replica count to set now, given the current one; records this recommendation in `memory`."""
    memory.seed(now, current)
    recommended, floor = recommend(load, bounds)
    stabilized = memory.add(now, recommended, bounds.stabilization)
    if recommended >= current:
        desired, reason = recommended, "ScaleUp" if recommended > current else "Steady"
    else:
        desired = max(min(stabilized, current), floor, bounds.min_replicas)
        desired = min(desired, bounds.max_replicas)
        reason = "ScaleDown" if desired < current else "Stabilizing"
    if current > bounds.max_replicas:  # the bounds changed: obey them at once, both ways
        desired, reason = min(desired, bounds.max_replicas), "ScaleDown"
    return Decision(desired=desired, recommended=recommended, floor=floor, reason=reason)
