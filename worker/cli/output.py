"""How the CLI speaks: tables, JSON, times and durations, and the one-line `error: …` with exit code 2.

Every command prints through these helpers so that listings line up the same way, `--json` means the same
thing everywhere, and a mistake the user can fix never ends in a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

EXIT_USAGE = 2  # bad input, unknown id, unreachable database: the user has something to fix

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def where(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def connection_error(dsn: str, exc: BaseException) -> str:
    reason = (str(exc).strip().splitlines() or ["unknown reason"])[-1]
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return (f"cannot connect to PostgreSQL at {where(dsn)}: {reason} (start the database, or point "
            "--database-url / KUBETASKS_DATABASE__URL at a reachable one)")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{value / 60:.1f}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
