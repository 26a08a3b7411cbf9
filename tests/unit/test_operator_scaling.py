"""WorkerPool replica maths on a fake clock: every second is passed in, nothing sleeps."""

from __future__ import annotations

import pytest

from kubetasks.operator import autoscaler, resources, scaling
from kubetasks.operator.scaling import Bounds, Load, Recommendations


def bounds(min_replicas: int = 0, max_replicas: int = 10, per: int = 4, window: float = 60) -> Bounds:
    return Bounds(min_replicas=min_replicas, max_replicas=max_replicas, per_replica=per, stabilization=window)


class Pool:
    """A Deployment's replica count driven by `decide` on a fake clock."""

    def __init__(self, b: Bounds, current: int = 0) -> None:
        self.bounds, self.current, self.now = b, current, 1000.0
        self.memory = Recommendations()

    def tick(self, runnable: int, running: int = 0, advance: float = 10) -> int:
        self.now += advance
        decision = scaling.decide(self.now, self.current, Load(runnable, running), self.bounds, self.memory)
        self.current = decision.desired
        return self.current


@pytest.mark.parametrize(("runnable", "running", "per", "expected"), [
    (0, 0, 4, 0), (1, 0, 4, 1), (4, 0, 4, 1), (5, 0, 4, 2), (3, 5, 4, 2), (100, 0, 4, 10), (0, 9, 1, 9),
])
def test_recommendation_is_ceil_of_work_over_concurrency(runnable: int, running: int, per: int,
                                                         expected: int) -> None:
    assert scaling.recommend(Load(runnable, running), bounds(per=per))[0] == expected


def test_bounds_clamp_both_ways() -> None:
    assert scaling.recommend(Load(0, 0), bounds(min_replicas=2))[0] == 2
    assert scaling.recommend(Load(1000, 0), bounds(max_replicas=3))[0] == 3


def test_scale_up_is_immediate() -> None:
    pool = Pool(bounds(window=300), current=1)
    assert pool.tick(runnable=40, advance=0) == 10


def test_scale_down_waits_for_the_window_then_follows_the_highest_recent_need() -> None:
    pool = Pool(bounds(window=60), current=0)
    assert pool.tick(runnable=20) == 5  # t=10
    assert pool.tick(runnable=8) == 5  # t=20: 2 wanted, but 5 was wanted within the window
    assert pool.tick(runnable=8, advance=30) == 5  # t=50
    assert pool.tick(runnable=8, advance=20) == 2  # t=70: the 5 is older than 60 s; the 2s are recent
    assert pool.tick(runnable=0, advance=59) == 2  # t=129: a 2 from t=70 is still inside
    assert pool.tick(runnable=0, advance=2) == 0  # t=131: all recent recommendations are 0


def test_a_blip_does_not_shed_workers() -> None:
    pool = Pool(bounds(window=60), current=0)
    pool.tick(runnable=12)
    for _ in range(5):  # the queue empties for a moment every other poll
        assert pool.tick(runnable=0) == 3
        assert pool.tick(runnable=12) == 3


def test_never_below_what_running_tasks_occupy() -> None:
    pool = Pool(bounds(window=0, per=4), current=5)
    assert pool.tick(runnable=0, running=9) == 3  # ceil(9 / 4): their workers must stay
    assert pool.tick(runnable=0, running=0) == 0


def test_an_idle_pool_reaches_zero_and_wakes_at_once() -> None:
    pool = Pool(bounds(min_replicas=0, window=30), current=2)
    assert pool.tick(runnable=0) == 2  # the current count counts as recommended when first seen
    assert pool.tick(runnable=0, advance=31) == 0  # min 0: scale to zero is allowed
    assert pool.tick(runnable=1, advance=1) == 1  # one runnable task: back up without waiting


def test_restart_never_scales_down_before_a_full_window() -> None:
    memory = Recommendations()  # a fresh operator: no history
    first = scaling.decide(500.0, 6, Load(0, 0), bounds(window=120), memory)
    assert first.desired == 6 and first.reason == "Stabilizing"
    assert scaling.decide(621.0, 6, Load(0, 0), bounds(window=120), memory).desired == 0


def test_min_replicas_is_a_floor_even_when_idle() -> None:
    pool = Pool(bounds(min_replicas=2, window=0), current=5)
    assert pool.tick(runnable=0) == 2


def test_lowered_max_applies_at_once() -> None:
    memory = Recommendations()
    decision = scaling.decide(0.0, 8, Load(100, 0), bounds(max_replicas=3, window=600), memory)
    assert decision.desired == 3


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 4),
    ({"KUBETASKS_WORKER__THREADS": "8"}, 8),
    ({"KUBETASKS_WORKER__PROCESSES": "3", "KUBETASKS_WORKER__THREADS": "2"}, 6),
    ({"KUBETASKS_WORKER__PROCESSES": "x", "KUBETASKS_WORKER__THREADS": "0"}, 4),
])
def test_concurrency_per_replica_from_the_container_env(env: dict[str, str], expected: int) -> None:
    assert scaling.per_replica(env) == expected


def _deployment(*containers: dict[str, object]) -> dict[str, object]:
    return {"spec": {"replicas": 1, "template": {"spec": {"containers": list(containers)}}}}


def test_concurrency_reads_the_named_container_and_prefers_the_spec() -> None:
    deployment = _deployment(
        {"name": "sidecar", "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "1"}]},
        {"name": "worker", "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "16"},
                                   {"name": "KUBETASKS_WORKER__PROCESSES", "valueFrom": {"secretKeyRef": {}}}]})
    spec = resources.WorkerPoolSpec.model_validate({"scaleTargetRef": {"name": "w", "container": "worker"}})
    assert autoscaler.concurrency(spec, deployment) == 16
    first = resources.WorkerPoolSpec.model_validate({"scaleTargetRef": {"name": "w"}})
    assert autoscaler.concurrency(first, deployment) == 1
    fixed = resources.WorkerPoolSpec.model_validate({"scaleTargetRef": {"name": "w"}, "concurrencyPerReplica": 7})
    assert autoscaler.concurrency(fixed, deployment) == 7


def test_held_tasks_do_not_count() -> None:
    assert scaling.recommend(Load(runnable=2, running=3, held=500), bounds(per=4))[0] == 2


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("0", 0), (" 3 ", 3)])
def test_paused_replicas_annotation_values(value: str | None, expected: int | None) -> None:
    assert scaling.parse_paused_replicas(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "two", "1.5"])
def test_a_bad_paused_replicas_value_says_how_to_fix_it(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not a replica count .*remove the annotation to resume autoscaling"):
        scaling.parse_paused_replicas(value)
