"""Errors users see: each names the field at fault and how to fix it."""

from __future__ import annotations


class KubetasksError(Exception):
    """Base of every error kubetasks raises on purpose."""


class InvalidInput(KubetasksError, ValueError):
    """Input refused before anything was stored."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class UnknownActor(InvalidInput):
    def __init__(self, name: str, field: str = "actor", known: list[str] | None = None) -> None:
        hint = "declare it with @actor in a module listed in KUBETASKS_WORKER__MODULES"
        if known:
            hint += "; known actors: " + ", ".join(sorted(known)[:20])
        super().__init__(field, f"unknown actor {name!r}", hint)


class TaskNotFound(KubetasksError, LookupError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} does not exist")
