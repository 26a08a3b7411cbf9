"""A Schedule's TaskRuns: names, bodies, adoption rules and the prune plan."""

from __future__ import annotations

from typing import Any

from kubetasks.operator import children, store

SCHEDULE = {"apiVersion": "kubetasks.dev/v1alpha1", "kind": "Schedule",
            "metadata": {"name": "nightly", "namespace": "team-a", "uid": "u-1"}}
ROW = {"id": 42, "actor": "reports.build", "args": {"day": "mon"}, "queue": "reports", "priority": 5,
       "max_retries": 2, "time_limit": 30.0}


def test_child_body_is_owned_labelled_and_says_what_runs() -> None:
    body = children.taskrun_body(SCHEDULE, ROW)
    meta = body["metadata"]
    assert meta["name"] == "nightly-42" and meta["namespace"] == "team-a"
    assert meta["labels"] == {"kubetasks.dev/schedule": "nightly", "kubetasks.dev/task-id": "42"}
    (owner,) = meta["ownerReferences"]
    assert owner == {"apiVersion": "kubetasks.dev/v1alpha1", "kind": "Schedule", "name": "nightly", "uid": "u-1",
                     "controller": True, "blockOwnerDeletion": True}
    assert body["spec"] == {"actor": "reports.build", "args": {"day": "mon"}, "queue": "reports", "priority": 5,
                            "retries": {"limit": 2}, "timeLimitSeconds": 30.0}
    assert children.adopted_task_id(body) == 42


def test_a_hand_made_taskrun_cannot_adopt_a_task_by_label() -> None:
    forged: dict[str, Any] = {"metadata": {"labels": {"kubetasks.dev/task-id": "42"}}}
    assert children.adopted_task_id(forged) is None
    not_controller = children.taskrun_body(SCHEDULE, ROW)
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert children.adopted_task_id(not_controller) is None
    garbage = children.taskrun_body(SCHEDULE, ROW)
    garbage["metadata"]["labels"]["kubetasks.dev/task-id"] = "x"
    assert children.adopted_task_id(garbage) is None


def test_plan_creates_missing_and_prunes_unwanted_own_children_only() -> None:
    existing = {"nightly-1": 1, "nightly-2": 2, "nightly-3": 3, "hand-made": 2, "unlabelled": None}
    plan = children.plan(existing, kept=[2, 3, 4, 5], schedule="nightly")
    assert plan.create == [4, 5]
    assert plan.delete == ["nightly-1"]


def test_targets_route_rows_to_taskruns() -> None:
    user = {"id": 1, "object_ref": "taskrun/ns/job/uid-9", "schedule_name": None}
    assert store.target_of(user) == store.Target("ns", "job", uid="uid-9")
    run = {"id": 5, "object_ref": None, "schedule_name": "ns/nightly", "schedule_source": "operator"}
    assert store.target_of(run) == store.Target("ns", "nightly-5", schedule="nightly")
    triggered = {**run, "object_ref": "trigger/ns/nightly/2024-01-01"}
    assert store.target_of(triggered) == store.Target("ns", "nightly-5", schedule="nightly")
    from_manifest = {**run, "schedule_source": "manifest"}
    assert store.target_of(from_manifest) is None
    assert store.target_of({"id": 3, "object_ref": "taskrun/broken"}) is None


def test_trigger_refs_stay_short() -> None:
    assert store.trigger_ref("ns", "n", "v1") == "trigger/ns/n/v1"
    long = store.trigger_ref("ns", "n", "x" * 1000)
    assert len(long) < 120 and long.startswith("trigger/ns/n/sha256:")
