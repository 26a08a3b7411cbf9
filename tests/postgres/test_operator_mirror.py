"""Rows -> custom resources on real PostgreSQL, with an in-memory stand-in for the Kubernetes API.

The apiserver tests cover the same paths for real; these run wherever PostgreSQL does and pin the
reconcile logic: idempotent TaskRun handling, Events once per transition, a Schedule's children and
pruning, the LISTEN path, and one autoscaling pass.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from waiting import wait_for

from kubetasks.operator import (
    autoscaler,
    config,
    listener,
    resources,
    scaling,
    schedules,
    store,
    sweep,
    taskruns,
    views,
)
from kubetasks.operator.runtime import Runtime
from kubetasks.worker import context, controls, db, queue, workflows
from kubetasks.worker.registry import actor
from kubetasks.worker.settings import Settings


@actor(name="optest.mirror")
def mirrored(**kwargs: object) -> object:
    return kwargs


class FakeKube:
    """The subset of `kube.Kube` the operator uses, over dicts; records Events and scale changes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []  # (object name, type, reason)
        self.scales: dict[tuple[str, str], int] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.lists: list[str] = []  # label selectors of the LISTs made
        self.gets: list[str] = []  # "<plural>/<namespace>/<name>" of the GETs made
        self._rv = itertools.count(1)

    def put(self, kind: resources.Kind, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", "ns")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        body.setdefault("apiVersion", resources.API_VERSION)
        body.setdefault("kind", kind.kind)
        self.objects[(kind.plural, meta["namespace"], meta["name"])] = body
        return body

    def get(self, kind: resources.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(f"{kind.plural}/{namespace}/{name}")
        found = self.objects.get((kind.plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def list_objects(self, kind: resources.Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        """One `key=value` or `key in (a,b)` requirement, the two forms the operator sends."""
        self.lists.append(label_selector)
        if " in (" in label_selector:
            key, _, values = label_selector.partition(" in (")
            wanted = set(values.rstrip(")").split(","))
        else:
            key, _, value = label_selector.partition("=")
            wanted = {value}
        return [copy.deepcopy(o) for (plural, ns, _), o in sorted(self.objects.items())
                if plural == kind.plural and ns == namespace
                and (not key or (o["metadata"].get("labels") or {}).get(key) in wanted)]

    def create(self, kind: resources.Kind, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        existing = self.objects.get((kind.plural, namespace, body["metadata"]["name"]))
        if existing is not None:  # the API server's 409, then Kube.create's read
            return copy.deepcopy(existing), False
        return copy.deepcopy(self.put(kind, copy.deepcopy(body))), True

    def delete(self, kind: resources.Kind, namespace: str, name: str) -> bool:
        return self.objects.pop((kind.plural, namespace, name), None) is not None

    def patch_status(self, kind: resources.Kind, namespace: str, name: str, status: dict[str, Any]) -> bool:
        body = self.objects.get((kind.plural, namespace, name))
        if body is None:
            return False
        current = body.setdefault("status", {})
        for key, value in status.items():  # a JSON merge patch, one level deep is all the operator needs
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return True

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.deployments.get((namespace, name))
        if found is None:
            return None
        return {**found, "spec": {**found["spec"], "replicas": self.scales[(namespace, name)]}}

    def set_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.scales[(namespace, name)] = replicas

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], type_, reason))


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    operator = config.OperatorSettings(resync_interval=timedelta(seconds=30),
                                       notify_batch_delay=timedelta(milliseconds=10))
    runtime = Runtime.create(settings, operator, api=FakeKube())  # type: ignore[arg-type]
    yield runtime
    runtime.close()


def fake(rt: Runtime) -> FakeKube:
    assert isinstance(rt.kube, FakeKube)
    return rt.kube


def finish(conn: db.Conn, task_id: int, state: str = "successful", reason: str = "Succeeded") -> None:
    conn.execute("UPDATE kubetasks.tasks SET state = %s, reason = %s, attempts = 1, started_at = now(), "
                 "finished_at = now(), updated_at = now() WHERE id = %s", (state, reason, task_id))


def test_taskrun_gets_one_task_and_one_event_per_transition(rt: Runtime, conn: db.Conn) -> None:
    kube = fake(rt)
    body = kube.put(resources.TASKRUN, {"metadata": {"name": "job"}, "spec": {"actor": "optest.mirror"}})
    taskruns.reconcile(rt, body)
    taskruns.reconcile(rt, kube.get(resources.TASKRUN, "ns", "job") or {})  # a re-delivery
    (task,) = queue.list_tasks(conn)
    assert task.object_ref == f"taskrun/ns/job/{body['metadata']['uid']}"
    status = kube.objects[("taskruns", "ns", "job")]["status"]
    assert (status["state"], status["taskId"], status["conditions"][0]["reason"]) == ("queued", task.id, "Queued")
    assert kube.events == [("job", "Normal", "Queued")]
    finish(conn, task.id, "error", "TimedOut")
    taskruns.sync_task(rt, store.task_views(conn, [task.id])[0])
    cond = kube.objects[("taskruns", "ns", "job")]["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "TimedOut")
    assert kube.events[-1] == ("job", "Warning", "TimedOut")


def test_rows_of_a_deleted_taskrun_never_touch_a_new_one_of_the_same_name(rt: Runtime, conn: db.Conn) -> None:
    kube = fake(rt)
    old = kube.put(resources.TASKRUN, {"metadata": {"name": "same"}, "spec": {"actor": "optest.mirror"}})
    taskruns.reconcile(rt, old)
    kube.delete(resources.TASKRUN, "ns", "same")
    kube.put(resources.TASKRUN, {"metadata": {"name": "same"}, "spec": {"actor": "optest.mirror"}})
    (task,) = queue.list_tasks(conn)
    taskruns.sync_task(rt, store.task_views(conn, [task.id])[0])
    assert "status" not in kube.objects[("taskruns", "ns", "same")]


def test_schedule_children_follow_runs_and_history_limits(rt: Runtime, conn: db.Conn, settings: Settings) -> None:
    kube = fake(rt)
    schedule = kube.put(resources.SCHEDULE, {"metadata": {"name": "nightly"}, "spec": {
        "actor": "optest.mirror", "schedule": "@daily", "successfulRunsHistoryLimit": 1,
        "failedRunsHistoryLimit": 1}})
    schedules.reconcile(rt, schedule)
    ready = kube.objects[("schedules", "ns", "nightly")]["status"]["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "True")
    runs = [queue.enqueue(conn, "optest.mirror", schedule_name="ns/nightly", settings=settings) for _ in range(3)]
    finish(conn, runs[0].id)
    finish(conn, runs[1].id)
    schedules.sync(rt, "ns", "nightly")
    names = sorted(n for (p, _, n) in kube.objects if p == "taskruns")
    assert names == [f"nightly-{runs[1].id}", f"nightly-{runs[2].id}"]  # one success kept, plus the live run
    child = kube.objects[("taskruns", "ns", f"nightly-{runs[2].id}")]
    assert child["metadata"]["ownerReferences"][0]["uid"] == schedule["metadata"]["uid"]
    assert child["status"]["state"] == "queued"
    status = kube.objects[("schedules", "ns", "nightly")]["status"]
    assert (status["active"], status["lastRunState"], status["lastRunName"]) == (
        1, "queued", f"nightly-{runs[2].id}")
    finish(conn, runs[2].id)
    schedules.sync(rt, "ns", "nightly")
    assert sorted(n for (p, _, n) in kube.objects if p == "taskruns") == [f"nightly-{runs[2].id}"]


def watched(rt: Runtime, kube: FakeKube) -> None:
    """The views as `views.ViewWatch` would hold them now: a fresh listing of both kinds."""
    for kind in (resources.SCHEDULE, resources.TASKRUN):
        rt.views.replace(kind, [views.trimmed(copy.deepcopy(body)) for (plural, _, _), body in kube.objects.items()
                                if plural == kind.plural])


def test_with_views_nothing_unchanged_is_read_and_a_change_is_written_from_a_fresh_read(
        rt: Runtime, conn: db.Conn, settings: Settings) -> None:
    kube = fake(rt)
    schedules.reconcile(rt, kube.put(resources.SCHEDULE, {"metadata": {"name": "nightly"}, "spec": {
        "actor": "optest.mirror", "schedule": "@daily"}}))
    first = queue.enqueue(conn, "optest.mirror", schedule_name="ns/nightly", settings=settings)
    schedules.sync(rt, "ns", "nightly")  # no listing in yet: the API server is read
    assert kube.lists == [f"{resources.SCHEDULE_LABEL}=nightly"] * 2  # reconcile's sync, this one
    watched(rt, kube)  # the watch has caught up with the TaskRun created
    kube.gets.clear()
    kube.lists.clear()

    schedules.sync(rt, "ns", "nightly")
    taskruns.sync_task(rt, store.task_views(conn, [first.id])[0])
    assert (kube.gets, kube.lists) == ([], [])

    finish(conn, first.id)
    taskruns.sync_task(rt, store.task_views(conn, [first.id])[0])
    assert kube.gets == [f"taskruns/ns/nightly-{first.id}"]
    assert kube.objects[("taskruns", "ns", f"nightly-{first.id}")]["status"]["state"] == "successful"

    # A view that lags (the next run's TaskRun created, not yet watched) costs a 409, never a second TaskRun.
    second = queue.enqueue(conn, "optest.mirror", schedule_name="ns/nightly", settings=settings)
    taskruns.sync_task(rt, store.task_views(conn, [second.id])[0])
    schedules.sync(rt, "ns", "nightly")
    assert sorted(n for (p, _, n) in kube.objects if p == "taskruns") == [
        f"nightly-{first.id}", f"nightly-{second.id}"]
    assert kube.lists == []


def test_the_sweep_syncs_schedules_whose_row_changed_and_each_one_in_turn(
        rt: Runtime, conn: db.Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    kube = fake(rt)
    for i in range(25):
        schedules.reconcile(rt, kube.put(resources.SCHEDULE, {"metadata": {"name": f"s{i:02}"}, "spec": {
            "actor": "optest.mirror", "schedule": "0 3 1 1 *"}}))
    # Each Schedule synced once per 10 passes: a slice of ceil(25 / 10) = 3 per pass, in turn.
    rt.operator = rt.operator.model_copy(update={"schedule_sync_interval": timedelta(seconds=1),
                                                 "schedule_full_resync_interval": timedelta(seconds=10)})
    synced: list[str] = []
    real_sync = schedules.sync

    def sync(runtime: Runtime, namespace: str, name: str, **given: Any) -> None:
        synced.append(name)
        if name == "s05":
            raise RuntimeError("the API server refused")  # one failure does not stop the pass
        real_sync(runtime, namespace, name, **given)

    monkeypatch.setattr(sweep.schedules, "sync", sync)
    passes = sweep.ScheduleSweep(rt)
    assert passes.sweep() == []  # the first look only records the rows (Kopf's resume synced them all)
    assert passes.sweep() == ["ns/s00", "ns/s01", "ns/s02"]
    assert kube.lists[-1:] == [f"{resources.SCHEDULE_LABEL} in (s00,s01,s02)"]  # one LIST for the slice
    conn.execute("UPDATE kubetasks.schedules SET next_run = '2031-01-01T03:00:00Z' WHERE name = 'ns/s20'")
    assert passes.sweep() == ["ns/s20", "ns/s03", "ns/s04", "ns/s05"]
    assert kube.objects[("schedules", "ns", "s20")]["status"]["nextScheduleTime"] == "2031-01-01T03:00:00Z"
    for _ in range(7):
        passes.sweep()
    assert set(synced) == {f"s{i:02}" for i in range(25)}
    assert passes.synced == len(synced) - synced.count("s05")


def test_an_invalid_schedule_is_refused_once(rt: Runtime, conn: db.Conn) -> None:
    kube = fake(rt)
    body = kube.put(resources.SCHEDULE, {"metadata": {"name": "bad"}, "spec": {
        "actor": "optest.mirror", "schedule": "@daily", "timeZone": "Nowhere/Land"}})
    schedules.reconcile(rt, body)
    schedules.reconcile(rt, body)
    ready = kube.objects[("schedules", "ns", "bad")]["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidTimeZone")
    assert kube.events == [("bad", "Warning", "InvalidTimeZone")]
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.schedules").fetchone() == {"n": 0}


def test_listener_mirrors_a_state_change_promptly(rt: Runtime, conn: db.Conn) -> None:
    kube = fake(rt)
    body = kube.put(resources.TASKRUN, {"metadata": {"name": "live"}, "spec": {"actor": "optest.mirror"}})
    taskruns.reconcile(rt, body)
    (task,) = queue.list_tasks(conn)
    thread = listener.Listener(rt)
    rt.start_thread(thread)
    wait_for(lambda: thread.since is not None, timeout=10, what="the listener's first resync")
    finish(conn, task.id)  # the trigger's NOTIFY is what wakes the listener; the resync is 30 s away
    wait_for(lambda: kube.objects[("taskruns", "ns", "live")]["status"]["state"] == "successful", timeout=5,
             interval=0.02, what="the LISTEN path")
    assert kube.events[-1] == ("live", "Normal", "Succeeded")


def test_a_taskrun_whose_actor_started_a_workflow_follows_its_steps(rt: Runtime, conn: db.Conn,
                                                                   settings: Settings) -> None:
    """The task starts a workflow and ends; the children move the steps on without touching the task's row,
    so the listener's progress pass (one query for every watched TaskRun) is what mirrors them."""
    kube = fake(rt)
    body = kube.put(resources.TASKRUN, {"metadata": {"name": "sync"}, "spec": {"actor": "optest.mirror"}})
    taskruns.reconcile(rt, body)
    (task,) = queue.list_tasks(conn)
    context.bind(context.TaskContext(task_id=task.id, actor="optest.mirror", attempt=1, max_retries=0,
                                     time_limit=60, settings=settings))
    try:  # as the actor would, inside its attempt
        wf = workflows.start(None, workflows.chain(workflows.each("pages", "optest.mirror", [{}] * 3),
                                                   workflows.step("report", workflows.call("optest.mirror"))))
    finally:
        context.bind(None)
    finish(conn, task.id)
    taskruns.sync_task(rt, store.task_views(conn, [task.id])[0])
    status = kube.objects[("taskruns", "ns", "sync")]["status"]
    assert (status["state"], status["progress"], status["workflow"]["taskId"]) == ("successful", "0/3", wf)
    assert [(s["name"], s["state"]) for s in status["workflow"]["steps"]] == [("pages", "running"),
                                                                             ("report", "waiting")]
    assert rt.workflows.ids() == [task.id]
    children = [t.id for t in workflows.children(conn, wf)]
    for child in children[:2]:
        finish(conn, child)
    thread = listener.Listener(rt)
    thread.workflow_progress()
    assert kube.objects[("taskruns", "ns", "sync")]["status"]["progress"] == "2/3"
    finish(conn, children[2])  # the last page starts the report step
    (report,) = workflows.children(conn, wf, step=1)
    finish(conn, report.id)
    thread.workflow_progress()
    status = kube.objects[("taskruns", "ns", "sync")]["status"]
    assert (status["progress"], status["workflow"]["state"]) == ("4/4", "successful")
    assert kube.events[-1] == ("sync", "Normal", "WorkflowSucceeded")
    assert rt.workflows.ids() == []  # a finished workflow is no longer re-read
    # Its children never become TaskRuns: no row of theirs routes to a custom resource.
    assert [store.target_of(row) for row in store.task_views(conn, children)] == [None] * 3
    assert sorted(n for (p, _, n) in kube.objects if p == "taskruns") == ["sync"]


def test_one_autoscaling_pass(rt: Runtime, conn: db.Conn, settings: Settings) -> None:
    kube = fake(rt)
    kube.deployments[("ns", "workers")] = {"spec": {"template": {"spec": {"containers": [
        {"name": "worker", "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "2"}]}]}}}}
    kube.scales[("ns", "workers")] = 0
    pool = kube.put(resources.WORKERPOOL, {"metadata": {"name": "pool"}, "spec": {
        "scaleTargetRef": {"name": "workers"}, "queues": ["q"], "minReplicas": 0}})
    for _ in range(3):
        queue.enqueue(conn, "optest.mirror", queue="q", settings=settings)
    status = autoscaler.step(rt, pool, scaling.Recommendations(), clock=100.0)
    assert kube.scales[("ns", "workers")] == 2
    assert (status["desired"], status["queued"], status["concurrency"]) == (2, 3, 2)
    assert kube.events == [("pool", "Normal", "Scaled")]
    missing = kube.put(resources.WORKERPOOL, {"metadata": {"name": "orphan"}, "spec": {
        "scaleTargetRef": {"name": "nope"}}})
    status = autoscaler.step(rt, missing, scaling.Recommendations())
    assert status["conditions"][0]["reason"] == "TargetNotFound"


def test_autoscaling_leaves_out_held_tasks_and_holds_paused_replicas(rt: Runtime, conn: db.Conn,
                                                                     settings: Settings) -> None:
    kube = fake(rt)
    kube.deployments[("ns", "workers")] = {"spec": {"template": {"spec": {"containers": [
        {"name": "worker", "env": [{"name": "KUBETASKS_WORKER__THREADS", "value": "2"}]}]}}}}
    kube.scales[("ns", "workers")] = 0
    pool = kube.put(resources.WORKERPOOL, {"metadata": {"name": "pool"}, "spec": {
        "scaleTargetRef": {"name": "workers"}, "queues": ["limited", "paused"], "minReplicas": 0,
        "scaleDownStabilizationSeconds": 0}})
    for _ in range(20):
        queue.enqueue(conn, "optest.mirror", queue="limited", settings=settings)
        queue.enqueue(conn, "optest.mirror", queue="paused", settings=settings)
    controls.set_limits(conn, controls.QueueControl("limited", concurrency_limit=3))
    controls.set_paused(conn, "paused", True)
    memory = scaling.Recommendations()
    status = autoscaler.step(rt, pool, memory, clock=100.0)
    # 3 may start (the limit), 37 are held: ceil(3 / 2) replicas, not ceil(40 / 2).
    assert kube.scales[("ns", "workers")] == 2
    assert (status["desired"], status["queued"], status["held"]) == (2, 3, 37)
    assert "37 more held back by queue controls" in status["conditions"][1]["message"]

    pool["metadata"]["annotations"] = {resources.PAUSED_REPLICAS_ANNOTATION: "0"}
    status = autoscaler.step(rt, pool, memory, clock=110.0)
    assert kube.scales[("ns", "workers")] == 0 and status["pausedReplicas"] == 0
    assert status["conditions"][0]["reason"] == "Paused"
    controls.set_limits(conn, controls.QueueControl("limited"))  # 20 may start now: still held at 0
    assert autoscaler.step(rt, pool, memory, clock=120.0)["desired"] == 0 and kube.scales[("ns", "workers")] == 0

    pool["metadata"]["annotations"] = {resources.PAUSED_REPLICAS_ANNOTATION: "many"}
    status = autoscaler.step(rt, pool, memory, clock=130.0)
    assert status["conditions"][0]["reason"] == "InvalidAnnotation"
    assert "kubetasks.dev/paused-replicas: 'many' is not a replica count" in status["conditions"][0]["message"]
    assert kube.scales[("ns", "workers")] == 0 and kube.events[-1] == ("pool", "Warning", "InvalidAnnotation")

    del pool["metadata"]["annotations"]
    status = autoscaler.step(rt, pool, memory, clock=140.0)
    assert kube.scales[("ns", "workers")] == 10 and status["desired"] == 10  # 20 runnable, 2 per replica
    assert status["pausedReplicas"] is None  # deleted from the stored status by the merge patch
    assert "pausedReplicas" not in kube.objects[("workerpools", "ns", "pool")]["status"]


def test_the_sweep_reconciles_a_taskrun_kopf_never_handled_and_leaves_newer_ones_to_kopf(
        rt: Runtime, conn: db.Conn) -> None:
    kube = fake(rt)
    long_ago = resources.rfc3339(datetime.now(UTC) - sweep.UNHANDLED_AFTER - timedelta(seconds=5))
    for name, created in (("missed", long_ago), ("new", resources.rfc3339(datetime.now(UTC)))):
        kube.put(resources.TASKRUN, {"metadata": {"name": name, "creationTimestamp": created},
                                     "spec": {"actor": "optest.mirror", "args": {"n": 1}}})
    refused = kube.put(resources.TASKRUN, {"metadata": {"name": "refused", "creationTimestamp": long_ago},
                                           "spec": {"actor": "optest.mirror", "args": "not an object"}})
    taskruns.reconcile(rt, refused)  # Kopf handled it: refused, a condition and no task
    watched(rt, kube)

    assert sweep.ScheduleSweep(rt).unhandled() == ["ns/missed"]
    status = kube.objects[("taskruns", "ns", "missed")]["status"]
    assert status["state"] == "queued" and status["taskId"]
    assert store.find_task(conn, store.taskrun_ref("ns", "missed", kube.objects[
        ("taskruns", "ns", "missed")]["metadata"]["uid"])) is not None
    assert "status" not in kube.objects[("taskruns", "ns", "new")]
    watched(rt, kube)
    assert sweep.ScheduleSweep(rt).unhandled() == []  # handled now: nothing more to do
