"""The API's count and catalogue routes: the overview, queue depth and the declared actors."""

from typing import Any

from fastapi import FastAPI

from .. import registry
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

    @app.get(f"{API}/queues", tags=["counts"], summary="Runnable, delayed and executing tasks per queue")
    def queues(who: User) -> dict[str, Any]:
        require(who, "list", "taskruns", None)
        with connection() as conn:
            return {"items": counts.queue_depth(conn)}

    @app.get(f"{API}/actors", tags=["actors"], summary="Declared actors with a JSON Schema of their args")
    def actors(who: User) -> dict[str, Any]:
        return {"items": [describe(registry.get(name)) for name in registry.names()]}

    @app.get(f"{API}/actors/{{name}}", tags=["actors"])
    def actor(who: User, name: str) -> dict[str, Any]:
        return describe(registry.get(registry.validate_name(name)))
