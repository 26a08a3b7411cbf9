"""The API's identity routes: who the caller is (whoami) and which namespaces they may see."""

from typing import Any

from fastapi import FastAPI

from . import counts
from .access import API, Access, User


def register(app: FastAPI, access: Access) -> None:
    connection, scope = access.connection, access.scope

    @app.get(f"{API}/whoami", tags=["meta"])
    def whoami(who: User) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "mode": access.auth.mode,
                "hide_payloads": access.hide_payloads}

    @app.get(f"{API}/namespaces", tags=["meta"], summary="Namespaces holding tasks or schedules the caller may see")
    def list_namespaces(who: User) -> dict[str, Any]:
        with connection() as conn:
            visible = scope(conn, who)
            return {"items": [ns for ns in counts.namespaces(conn) if visible.allows(ns)],
                    "standalone": visible.cluster}
