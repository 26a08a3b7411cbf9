"""The API's count and catalogue routes: the overview, queue depth (with pause and resume) and the actors."""

from typing import Any

from fastapi import FastAPI

from .. import controls, registry
from . import counts
from .access import API, Access, User
from .schemas import describe


def register(app: FastAPI, access: Access) -> None:
    connection, require = access.connection, access.require

    @app.get(f"{API}/overview", tags=["counts"],
             summary="Live counts by state and actor, last hour/day, throughput per minute, queue depth")
    def overview(who: User) -> dict[str, Any]:
        require(who, "list", "taskruns", None)
        with connection() as conn:
            return counts.overview(conn)

    @app.get(f"{API}/queues", tags=["counts"],
             summary="Runnable, delayed and executing tasks per queue, its pause and limits, tasks they hold back")
    def queues(who: User) -> dict[str, Any]:
        require(who, "list", "taskruns", None)
        with connection() as conn:
            return {"items": counts.queue_depth(conn)}

    # Queues are not namespaced: pausing one is checked at cluster scope (verb pause on taskruns).
    @app.post(f"{API}/queues/{{name}}/pause", tags=["counts"],
              summary="Workers claim nothing from the queue; running tasks finish (survives restarts)")
    def pause_queue(who: User, name: str) -> dict[str, Any]:
        require(who, "pause", "taskruns", None)
        with connection() as conn:
            paused = controls.set_paused(conn, name, True).as_json()
        counts.forget_overview()
        return paused

    @app.post(f"{API}/queues/{{name}}/resume", tags=["counts"], summary="Workers claim from the queue again")
    def resume_queue(who: User, name: str) -> dict[str, Any]:
        require(who, "pause", "taskruns", None)
        with connection() as conn:
            resumed = controls.set_paused(conn, name, False).as_json()
        counts.forget_overview()
        return resumed

    @app.get(f"{API}/actors", tags=["actors"], summary="Declared actors with a JSON Schema of their args")
    def actors(who: User) -> dict[str, Any]:
        return {"items": [describe(registry.get(name)) for name in registry.names()]}

    @app.get(f"{API}/actors/{{name}}", tags=["actors"])
    def actor(who: User, name: str) -> dict[str, Any]:
        return describe(registry.get(registry.validate_name(name)))
