"""The dashboard's named SQL queries, from `sql/*.sql` beside this module (same format as the worker's)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import LiteralString

from ..queries import parse


@cache
def all_queries() -> dict[str, LiteralString]:
    found: dict[str, LiteralString] = {}
    folder = resources.files(__package__ or "kubetasks.worker.dashboard") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, text in parse(entry.read_text()).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in more than one file")
                found[name] = text
    return found


def get(name: str) -> LiteralString:
    return all_queries()[name]
