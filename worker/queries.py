"""Named SQL queries, loaded from the `.sql` files beside this module (and, through `load`, the operator's).

Each query is a block introduced by `-- name: why`; reviewing the SQL means reading one file per table.
Advisory lock classes are written `{lock:attempt}` in the files and filled in from `protocol` on load, so
the numbers live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import LiteralString

from . import protocol

_HEADER = re.compile(r"^-- ([a-z_]+): .*$", re.MULTILINE)
_LOCK_CLASS = re.compile(r"\{lock:([a-z]+)\}")
QUERY_FILES = ("tasks.sql", "schedules.sql", "database.sql", "dev.sql", "workflows.sql", "notifications.sql",
               "monitoring.sql", "queues.sql")


def parse(text: str) -> dict[str, LiteralString]:
    """Split a file into {name: sql}; text before the first named block is the file's preamble."""
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        if not body.strip().rstrip(";").strip():
            # Also what a comment line shaped like a header ("-- word: ...") inside a block leads to.
            raise ValueError(f"query {name!r} is empty")
        # Still a literal in spirit: the text is a file we ship, the substitutions constants of ours.
        queries[name] = _LOCK_CLASS.sub(_lock_class, body.strip().rstrip(";"))
    return queries


def _lock_class(match: re.Match[str]) -> str:
    try:
        return str(protocol.SQL_LOCK_CLASSES[match.group(1)])
    except KeyError:
        raise ValueError(f"unknown advisory lock class {match.group(0)!r} in SQL") from None


def load(package: str, files: Sequence[str]) -> dict[str, LiteralString]:
    """The named queries of `files` in `package` (a package holding `.sql` data); names are unique across them."""
    found: dict[str, LiteralString] = {}
    folder = resources.files(package)
    for filename in files:
        resource = folder / filename
        if not resource.is_file():
            continue
        for name, sql in parse(resource.read_text()).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in more than one file")
            found[name] = sql
    return found


@cache
def all_queries() -> dict[str, LiteralString]:
    return load("kubetasks.worker.sql", QUERY_FILES)


def get(name: str) -> LiteralString:
    return all_queries()[name]
