"""What a principal may see (Scope) and which namespace a task or schedule belongs to: the rules every other
dashboard module filters by, kept in one place so the SQL and the Python checks agree."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPERATOR_REF = re.compile(r"^(taskrun|trigger)/([^/]+)/")


@dataclass(frozen=True)
class Scope:
    """What a principal may see: every namespace (None) or these ones, and standalone (cluster-scoped) tasks."""

    namespaces: frozenset[str] | None = None
    cluster: bool = True

    @property
    def everything(self) -> bool:
        return self.namespaces is None and self.cluster

    def allows(self, namespace: str | None) -> bool:
        if namespace is None:
            return self.cluster
        return self.namespaces is None or namespace in self.namespaces


EVERYTHING = Scope()


def task_namespace(schedule_name: str | None, object_ref: str | None) -> str | None:
    """Mirror of the SQL function kubetasks.task_namespace (migration 0003)."""
    if schedule_name is not None:
        return schedule_name.split("/", 1)[0]
    if object_ref is not None:
        match = _OPERATOR_REF.match(object_ref)
        if match:
            return match.group(2)
    return None


def schedule_namespace(name: str) -> str:
    return name.split("/", 1)[0]
