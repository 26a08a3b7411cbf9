"""Actors: the Python functions tasks run, declared with `@actor` and looked up by name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from . import notifyrules, protocol
from .errors import InvalidInput, UnknownActor

P = ParamSpec("P")
R = TypeVar("R")



@dataclass(frozen=True)
class Actor:
    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    max_retries: int | None = None
    time_limit: float | None = None
    priority: int = 0
    retry_backoff: float | None = None
    # Default notification rules of its tasks; not part of equality or the hash (rules hold lists, which do not
    # hash, and an actor is used as a cache key).
    notify: tuple[notifyrules.NotificationRule, ...] = field(default=(), compare=False)
    # An `async def` actor: its attempts run on the worker's event loop instead of a thread.
    is_async: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


_registry: dict[str, Actor] = {}


def validate_name(name: str, field: str = "actor") -> str:
    if not isinstance(name, str) or not protocol.ACTOR_NAME.fullmatch(name):
        raise InvalidInput(field, f"{name!r} is not a valid actor name",
                           "use 1-256 letters, digits, '_', '.', ':' or '-', starting with a letter or '_'")
    return name


def validate_queue(queue: str, field: str = "queue") -> str:
    if not isinstance(queue, str) or not protocol.QUEUE_NAME.fullmatch(queue):
        raise InvalidInput(field, f"{queue!r} is not a valid queue name",
                           "use 1-128 letters, digits, '_', '.', ':' or '-'")
    return queue


def actor(name: str | None = None, *, queue: str = "default", max_retries: int | None = None,
          time_limit: float | None = None, priority: int = 0,
          retry_backoff: float | None = None,
          notify: Sequence[notifyrules.NotificationRule | dict[str, Any]] | None = None,
          ) -> Callable[[Callable[P, R]], Actor]:
    """Declare a function as an actor. `time_limit` and `retry_backoff` (the first retry's delay, doubling
    after) are in seconds; None means the worker's settings. `notify`: notification rules of its tasks
    (an enqueue's own `notify` replaces them)."""
    rules = tuple(notifyrules.parse(notify, field="notify"))
    if max_retries is not None and max_retries < 0:
        raise InvalidInput("max_retries", f"{max_retries} is negative", "use 0 or more")
    if time_limit is not None and time_limit <= 0:
        raise InvalidInput("time_limit", f"{time_limit} is not positive", "give seconds > 0")

    def register(fn: Callable[P, R]) -> Actor:
        actor_name = validate_name(name or f"{fn.__module__}.{fn.__qualname__}")
        declared = Actor(actor_name, fn, validate_queue(queue), max_retries, time_limit, priority, retry_backoff,
                         rules)
        existing = _registry.get(actor_name)
        if existing is not None and existing.fn is not fn and _origin(existing.fn) != _origin(fn):
            raise InvalidInput("actor", f"{actor_name!r} is declared twice", "give each actor its own name")
        _registry[actor_name] = declared
        return declared

    return register


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""))


def get(name: str) -> Actor:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownActor(name, known=list(_registry)) from None


def find(name: str) -> Actor | None:
    """The actor of that name, None when this process did not declare it."""
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)


def load_modules(modules: list[str]) -> None:
    """Import the modules that declare actors (and the built-in ones)."""
    importlib.import_module("kubetasks.worker.builtins")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InvalidInput("worker.modules", f"cannot import {module!r}: {exc}",
                               "check KUBETASKS_WORKER__MODULES and the worker's PYTHONPATH") from exc
