"""The workflow bookkeeping of migration 0005 on real PostgreSQL, children finished by hand (no workers):
step order, the failure policy and its reason, callbacks, cancel and retry."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from kubetasks.worker import db, metrics, queue, workflows
from kubetasks.worker.cli import main
from kubetasks.worker.queue import TaskFilter
from kubetasks.worker.settings import Settings


def finish(conn: db.Conn, ids: list[int], state: str = "successful", error: str | None = None) -> None:
    conn.execute("UPDATE kubetasks.tasks SET state = %s::kubetasks.task_state, error = %s, finished_at = now()"
                 " WHERE id = ANY(%s)", (state, error, ids))


def live(conn: db.Conn, wf: int) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for row in conn.execute("SELECT id, step FROM kubetasks.tasks WHERE parent_id = %s"
                            " AND state IN ('queued', 'running') ORDER BY id", (wf,)):
        found.setdefault(row["step"], []).append(row["id"])
    return found


def three_steps(**options: Any) -> workflows.Workflow:
    return workflows.chain(
        workflows.each("users", "t.noop", [{"page": i} for i in range(20)]),
        workflows.each("groups", "t.noop", [{"page": i} for i in range(4)]),
        workflows.step("memberships", workflows.call("t.noop")),
        name="ldap", **options)


def test_steps_start_in_order_and_the_parent_ends_successful(conn: db.Conn) -> None:
    wf = workflows.start(conn, three_steps(callback=workflows.call("t.noop", {"note": "done"})))
    parent = queue.get_task(conn, wf)
    assert (parent.state, parent.worker, parent.eta.year) == ("running", None, 9999)
    assert list(live(conn, wf)) == [0] and len(live(conn, wf)[0]) == 20
    finish(conn, live(conn, wf)[0][:19])
    assert list(live(conn, wf)) == [0]
    finish(conn, live(conn, wf)[0])
    assert list(live(conn, wf)) == [1]
    finish(conn, live(conn, wf)[1][:3])
    summary = [s.summary() for s in workflows.progress(conn, wf)]
    assert summary == ["users 20/20", "groups 3/4", "memberships 0/0"]
    finish(conn, live(conn, wf)[1])
    finish(conn, live(conn, wf)[2])
    parent = queue.get_task(conn, wf)
    assert (parent.state, parent.reason) == ("successful", "Succeeded")
    assert [s["done"] for s in parent.result["steps"]] == [20, 4, 1]
    callbacks = queue.list_tasks(conn, TaskFilter(actors=["t.noop"], top_level=True))
    assert [c.args for c in callbacks] == [{"note": "done", "workflow": wf, "state": "successful"}]


def test_a_failed_child_stops_the_chain_naming_it(conn: db.Conn) -> None:
    wf = workflows.start(conn, three_steps())
    users = live(conn, wf)[0]
    finish(conn, users[3:4], "error", "LDAP said no\ntraceback")
    finish(conn, users[:3] + users[4:])
    parent = queue.get_task(conn, wf)
    assert (parent.state, parent.reason) == ("error", "ChildFailed")
    assert parent.error == f"step users: child {users[3]} (t.noop) error: LDAP said no"
    assert live(conn, wf) == {}  # groups never started

    # Retry re-runs only the failed child, then the chain carries on.
    assert queue.retry_task(conn, wf).state == "running"
    assert live(conn, wf) == {0: [users[3]]}
    finish(conn, [users[3]])
    assert list(live(conn, wf)) == [1]


def test_continue_policy_runs_later_steps_and_warns(conn: db.Conn) -> None:
    wf = workflows.start(conn, three_steps(on_failure="continue"))
    users = live(conn, wf)[0]
    finish(conn, users[:1], "error", "boom")
    finish(conn, users[1:])
    finish(conn, live(conn, wf)[1])
    finish(conn, live(conn, wf)[2])
    parent = queue.get_task(conn, wf)
    assert (parent.state, parent.reason) == ("warning", "SucceededWithFailedChildren")


def test_cancel_cancels_pending_children_and_retry_resumes(conn: db.Conn) -> None:
    wf = workflows.start(conn, three_steps())
    users = live(conn, wf)[0]
    finish(conn, users[:5])
    assert queue.cancel_task(conn, wf) is not None
    assert queue.get_task(conn, wf).state == "cancelled"
    assert live(conn, wf) == {}
    steps = workflows.progress(conn, wf)
    assert (steps[0].succeeded, steps[0].cancelled, steps[0].pending) == (5, 15, 0)
    assert workflows.retry(conn, wf) == 15
    assert live(conn, wf) == {0: users[5:]}
    finish(conn, users[5:])
    assert list(live(conn, wf)) == [1]


def test_empty_steps_are_passed_and_an_empty_group_finishes_at_once(conn: db.Conn) -> None:
    wf = workflows.start(conn, workflows.group("t.noop", []))
    assert queue.get_task(conn, wf).state == "successful"
    flow = workflows.chain(workflows.step("nothing"), workflows.step("one", workflows.call("t.noop")))
    wf = workflows.start(conn, flow)
    assert list(live(conn, wf)) == [1]


def test_deleting_a_pending_child_counts_it_cancelled(conn: db.Conn) -> None:
    wf = workflows.start(conn, workflows.group("t.noop", [{}, {}]))
    assert queue.flush_queue(conn, "default") == 2
    parent = queue.get_task(conn, wf)
    assert parent.state == "error"
    # Deleting the parent deletes everything it owns.
    conn.execute("DELETE FROM kubetasks.tasks WHERE id = %s", (wf,))
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.workflow_steps").fetchone() == {"n": 0}


def test_list_can_hide_children(conn: db.Conn) -> None:
    wf = workflows.start(conn, workflows.group("t.noop", [{}, {}, {}]))
    assert [t.id for t in queue.list_tasks(conn, TaskFilter(top_level=True))] == [wf]
    assert len(queue.list_tasks(conn)) == 4


def test_cli_shows_the_tree_and_hides_children(conn: db.Conn, dsn: str) -> None:
    wf = workflows.start(conn, workflows.chain(workflows.each("users", "t.noop", [{}] * 12),
                                               workflows.step("groups", workflows.call("t.noop")), name="ldap"))
    finish(conn, live(conn, wf)[0][:2], "error", "LDAP said no")
    runner = CliRunner()
    shown = runner.invoke(main, ["tasks", "show", str(wf)])
    assert shown.exit_code == 0, shown.output
    assert f"workflow {wf} ldap: running" in shown.output
    assert "├─ step 0 users 2/12 (2 failed) [running]" in shown.output
    assert "LDAP said no" in shown.output and "… 2 more" in shown.output
    assert "└─ step 1 groups 0/0 [waiting]" in shown.output
    listed = runner.invoke(main, ["tasks", "list", "--hide-children", "--json"])
    assert [t["id"] for t in json.loads(listed.output)] == [wf]


def test_metrics_count_workflows_by_state(conn: db.Conn, settings: Settings) -> None:
    done = workflows.start(conn, workflows.group("t.noop", []))
    workflows.start(conn, workflows.group("t.noop", [{}]))
    assert queue.get_task(conn, done).state == "successful"
    families = {f.name: f for f in metrics.DatabaseCollector(settings.database, cache_seconds=0).collect()}
    samples = {s.labels["state"]: s.value for s in families["kubetasks_workflows"].samples}
    assert samples == {"running": 1, "successful": 1}


def test_a_child_retried_on_its_own_is_pending_again(conn: db.Conn) -> None:
    wf = workflows.start(conn, three_steps())
    users = live(conn, wf)[0]
    finish(conn, users[:1], "error", "boom")
    queue.retry_task(conn, users[0])  # before the step closed: it must finish again before the step does
    finish(conn, users[1:])
    assert list(live(conn, wf)) == [0]
    finish(conn, users[:1])
    assert list(live(conn, wf)) == [1]
    # After the step closed: counted again, never below zero, and the chain is not moved twice.
    queue.retry_task(conn, users[1])
    finish(conn, users[1:2])
    assert list(live(conn, wf)) == [1] and len(live(conn, wf)[1]) == 4
    assert [s.state for s in workflows.progress(conn, wf)] == ["done", "running", "waiting"]


def test_an_error_while_moving_on_fails_the_workflow_not_the_outcome(conn: db.Conn) -> None:
    wf = workflows.start(conn, workflows.group("t.noop", [{}], callback=workflows.call("t.noop")))
    conn.execute("UPDATE kubetasks.workflows SET callback = '{\"actor\": null}' WHERE task_id = %s", (wf,))
    finish(conn, live(conn, wf)[0])  # the outcome is written ...
    parent = queue.get_task(conn, wf)
    assert (parent.state, parent.reason) == ("error", "WorkflowFailed")  # ... and the workflow says why
    assert "null value" in (parent.error or "")
