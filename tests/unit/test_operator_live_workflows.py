"""runtime.LiveWorkflows: which mirrored rows the listener re-reads for their workflow's progress."""

from __future__ import annotations

from typing import Any

from kubetasks.operator.runtime import LiveWorkflows


def row(task_id: int, workflow_state: str | None, done: int = 0) -> dict[str, Any]:
    return {"id": task_id, "state": "successful", "attempts": 1, "workflow_state": workflow_state,
            "workflow_steps": [{"name": "pages", "done": done, "total": 3}]}


def test_rows_are_watched_while_their_workflow_runs_and_only_moved_ones_come_back() -> None:
    live = LiveWorkflows()
    live.note(row(1, "running"))
    live.note(row(2, None))  # a plain task: nothing to follow
    live.note(row(3, "running"))
    assert live.ids() == [1, 3]
    assert live.moved([1, 3], [row(1, "running"), row(3, "running", done=1)]) == [row(3, "running", done=1)]
    live.note(row(3, "successful", done=3))
    assert live.ids() == [1]


def test_purged_rows_and_rows_without_a_taskrun_are_forgotten() -> None:
    live = LiveWorkflows()
    for task_id in (1, 2):
        live.note(row(task_id, "running"))
    assert live.moved([1, 2], [row(2, "running", done=1)]) == [row(2, "running", done=1)]  # 1 was purged
    assert live.ids() == [2]
    live.settle(row(2, "running", done=1))  # the mirror did not note it: its TaskRun is gone
    assert live.ids() == []
    live.note(row(4, "running"))
    live.settle(row(4, "running"))  # noted as it is: kept
    assert live.ids() == [4]
