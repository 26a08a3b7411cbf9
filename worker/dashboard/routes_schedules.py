"""The API's schedule routes: list, detail, trigger, pause, resume, edit and create."""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from .. import manifests
from ..errors import InvalidInput
from . import schedules, tasks
from .access import API, Access, User
from .bodies import ScheduleCreate, ScheduleEdit
from .http_errors import Conflict
from .scope import schedule_namespace


def register(app: FastAPI, access: Access) -> None:
    connection, require, scope = access.connection, access.require, access.scope
    payloads, visible_schedule = access.payloads, access.visible_schedule

    @app.get(f"{API}/schedules", tags=["schedules"], summary="Schedules with next and last run")
    def list_schedules(who: User, namespace: str | None = None) -> dict[str, Any]:
        tasks.TaskQuery(namespace=namespace).check()
        with connection() as conn:
            return {"items": payloads(who, schedules.list_schedules(conn, scope(conn, who, "schedules"), namespace))}

    def schedule_route(path: str, method: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        return app.api_route(f"{API}/schedules/{{namespace}}/{{name}}{path}", methods=[method],
                             tags=["schedules"], **kwargs)

    @schedule_route("", "GET", summary="One schedule with its recent runs")
    def get_schedule(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            data = payloads(who, [schedules.schedule_detail(conn, key)])[0]
            data["recent_runs"] = payloads(who, data["recent_runs"])
            return data

    @schedule_route("/trigger", "POST", summary="Start one run now (works while paused)")
    def trigger(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "trigger", "schedules", namespace)
            triggered = schedules.trigger_schedule(conn, key)
            triggered["task"] = payloads(who, [triggered["task"]])[0]
            return triggered

    @schedule_route("/pause", "POST", summary="Stop starting runs (not for Schedule resources)")
    def pause(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "pause", "schedules", namespace)
            return schedules.pause_schedule(conn, key)

    @schedule_route("/resume", "POST", summary="Un-pause: one run now, then the next tick")
    def resume(who: User, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "pause", "schedules", namespace)
            try:
                return schedules.resume_schedule(conn, key)
            except schedules.OwnedByResource:
                raise
            except InvalidInput as exc:
                if isinstance(exc, LookupError):
                    raise
                raise Conflict(exc.field, exc.problem, exc.fix) from None

    @schedule_route("", "PATCH", summary="Edit cron and time zone (not for Schedule resources)")
    def edit(who: User, namespace: str, name: str, body: ScheduleEdit) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        with connection() as conn:
            visible_schedule(conn, who, key)
            require(who, "update", "schedules", namespace)
            return schedules.edit_schedule(conn, key, cron=body.cron, time_zone=body.time_zone)

    @app.post(f"{API}/schedules", tags=["schedules"], status_code=201,
              summary="Create a schedule (the task manager's 'on a cron')")
    def create_schedule(who: User, body: ScheduleCreate) -> dict[str, Any]:
        manifests.check_schedule_name(body.name)
        require(who, "create", "schedules", schedule_namespace(body.name))
        with connection() as conn:
            return schedules.create_schedule(conn, body.name, body.actor, body.args, body.cron, body.time_zone,
                                           body.queue)
