"""The API's task routes: list, detail, enqueue, retry, cancel, delete and the bulk runbook actions."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query

from .. import queue
from ..errors import InvalidInput
from . import tasks
from .access import API, Access, User
from .bodies import Bulk, CancelBody, TaskCreate
from .http_errors import Conflict


def register(app: FastAPI, access: Access) -> None:
    connection, require, scope = access.connection, access.require, access.scope
    payloads, visible_task = access.payloads, access.visible_task

    @app.get(f"{API}/tasks", tags=["tasks"], summary="Tasks, newest first, with keyset pagination")
    def list_tasks(who: User,
                   state: Annotated[list[str], Query(description="Repeatable.")] = [],  # noqa: B006
                   actor: Annotated[list[str], Query()] = [],  # noqa: B006
                   queue: Annotated[list[str], Query()] = [],  # noqa: B006
                   schedule: str | None = None,
                   object: Annotated[str | None, Query(description="object_ref")] = None,
                   namespace: str | None = None,
                   standalone: bool = False,
                   exclude_successful: bool = False,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None,
                   search: str | None = None,
                   before: Annotated[int | None, Query(description="The `next` of the previous page.")] = None,
                   limit: Annotated[int, Query(ge=1, le=tasks.MAX_LIMIT)] = 50) -> dict[str, Any]:
        query = tasks.TaskQuery(tuple(state), tuple(actor), tuple(queue), schedule, object, namespace,
                                  standalone, exclude_successful, created_after, created_before, search)
        query.check()
        with connection() as conn:
            page = tasks.list_tasks(conn, query, scope(conn, who), limit=limit, before=before)
        page["items"] = payloads(who, page["items"])
        return page

    @app.get(f"{API}/tasks/{{task_id}}", tags=["tasks"], summary="One task with its attempts (logs, errors)")
    def get_task(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            visible_task(conn, who, task_id)
            return payloads(who, [tasks.task_detail(conn, task_id)])[0]

    @app.post(f"{API}/tasks", tags=["tasks"], status_code=201, summary="Enqueue a task (the task manager)")
    def create_task(who: User, body: TaskCreate) -> dict[str, Any]:
        require(who, "create", "taskruns", None)
        if body.eta is not None and body.eta.tzinfo is None:
            raise InvalidInput("eta", "has no time zone", "write it with an offset, e.g. 2026-01-01T10:00:00Z")
        with connection() as conn:
            return tasks.create_task(conn, body.actor, body.args, queue_name=body.queue, eta=body.eta,
                                       description=body.description)

    @app.post(f"{API}/tasks/{{task_id}}/retry", tags=["tasks"], summary="Queue a finished task again")
    def retry(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            require(who, "retry", "taskruns", visible_task(conn, who, task_id))
            try:
                task = queue.retry_task(conn, task_id)
            except InvalidInput as exc:
                raise Conflict(exc.field, exc.problem, exc.fix) from None
            return payloads(who, [tasks.task_json(task)])[0]

    @app.post(f"{API}/tasks/{{task_id}}/cancel", tags=["tasks"], summary="Cancel a queued or running task")
    def cancel(who: User, task_id: int, body: CancelBody | None = None) -> dict[str, Any]:
        with connection() as conn:
            require(who, "cancel", "taskruns", visible_task(conn, who, task_id))
            task = queue.cancel_task(conn, task_id, body.message if body else None)
            if task is None:
                raise Conflict("id", f"task {task_id} has already finished", "nothing to cancel")
            return payloads(who, [tasks.task_json(task)])[0]

    @app.delete(f"{API}/tasks/{{task_id}}", tags=["tasks"], summary="Delete a finished task and its attempts")
    def delete(who: User, task_id: int) -> dict[str, Any]:
        with connection() as conn:
            require(who, "delete", "taskruns", visible_task(conn, who, task_id))
            row = conn.execute("DELETE FROM kubetasks.tasks WHERE id = %s AND state NOT IN ('queued', 'running') "
                               "RETURNING id", (task_id,)).fetchone()
            if row is None:
                raise Conflict("id", f"task {task_id} has not finished", "cancel it first")
            return {"deleted": task_id}

    @app.post(f"{API}/tasks/bulk", tags=["tasks"],
              summary="Runbook actions by filter: delete, retry failed, flush a queue (dry run by default)")
    def bulk(who: User, body: Bulk) -> dict[str, Any]:
        verb = {"delete": "delete", "retry": "retry", "flush": "flush"}[body.action]
        require(who, "list" if body.dry_run else verb, "taskruns", None)
        f = body.filter
        query = tasks.TaskQuery(tuple(f.state), tuple(f.actor), tuple(f.queue), f.schedule, f.object,
                                  exclude_successful=f.exclude_successful)
        query.check()
        with connection() as conn:
            return tasks.bulk(conn, body.action, query, dry_run=body.dry_run, queue_name=body.queue,
                                include_unfinished=body.include_unfinished)
