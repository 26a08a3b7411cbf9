"""Connections (the one place connection options are set) and schema migrations.

Every connection kubetasks opens comes from `connect`, `connect_async` or `pool`: autocommit, dict rows, a
connect timeout and an application_name that says who holds it in `pg_stat_activity`. `Backoff` is the one
reconnection delay policy: doubling from a first delay up to the settings' `reconnect_max_backoff`.

Migrations are numbered `.sql` files applied in order inside one transaction each; a session-level
advisory lock held for the whole run serialises concurrent `kubetasks migrate` runs, so two processes
starting at once are safe (the first applies everything pending, the others find nothing left).
Their bookkeeping statements are in `sql/database.sql`; `sql/schema.sql` is what they add up to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from . import queries
from .settings import DatabaseSettings

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Conn = psycopg.Connection[dict[str, Any]]
AsyncConn = psycopg.AsyncConnection[dict[str, Any]]
# What a lost or refused connection raises; the loops that reconnect catch exactly these.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("kubetasks.worker.sql.migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


_JSON = json.JSONDecoder()


def load_json(data: bytes | str) -> Any:
    """json.loads for what PostgreSQL sends: its json(b) text has no whitespace around the value, so the
    scanner is called directly (json.loads spends most of its time on the regular expressions around the value);
    anything else (a json column keeps its input's spacing) goes through json.loads."""
    text = data.decode() if isinstance(data, bytes) else data
    try:
        value, end = _JSON.raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _options(connect_timeout: float, application_name: str, autocommit: bool = True) -> dict[str, Any]:
    # libpq takes whole seconds and treats 0 as "wait forever": never round down to that.
    return {"autocommit": autocommit, "row_factory": dict_row, "connect_timeout": max(1, int(connect_timeout)),
            "application_name": application_name}


def connect(target: str | DatabaseSettings, *, autocommit: bool = True, connect_timeout: float | None = None,
            application_name: str = "kubetasks") -> Conn:
    """A connection to a DSN, or to the database the settings name (with their connect timeout)."""
    dsn, timeout = _target(target, connect_timeout)
    conn: Conn = psycopg.connect(dsn, **_options(timeout, application_name, autocommit))
    set_json_loads(load_json, conn)
    return conn


async def connect_async(target: str | DatabaseSettings, *, connect_timeout: float | None = None,
                        application_name: str = "kubetasks") -> AsyncConn:
    dsn, timeout = _target(target, connect_timeout)
    conn: AsyncConn = await psycopg.AsyncConnection.connect(dsn, **_options(timeout, application_name))
    set_json_loads(load_json, conn)
    return conn


def pool(target: str | DatabaseSettings, *, max_size: int, min_size: int = 1,
         application_name: str = "kubetasks") -> ConnectionPool[Any]:
    """A pool opened at once (connections are made in the background, so a missing database does not
    block the caller); `with pool.connection() as conn` then behaves like `connect`'s connections."""
    dsn, timeout = _target(target, None)
    return ConnectionPool(dsn, min_size=min_size, max_size=max_size, open=True, name=application_name,
                          kwargs=_options(timeout, application_name),
                          configure=lambda conn: set_json_loads(load_json, conn))


def _target(target: str | DatabaseSettings, connect_timeout: float | None) -> tuple[str, float]:
    if isinstance(target, DatabaseSettings):
        return target.url, connect_timeout if connect_timeout is not None else target.connect_timeout
    return target, connect_timeout if connect_timeout is not None else 5.0


@dataclass
class Backoff:
    """Reconnection delays: `first`, doubling each failure up to `maximum`; `reset()` after a success."""

    first: float
    maximum: float
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.first

    @classmethod
    def for_database(cls, database: DatabaseSettings, first: float = 0.5) -> Backoff:
        return cls(first, database.reconnect_max_backoff)

    def next(self) -> float:
        """The delay to wait now; the following one doubles."""
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


def listen(channel: str) -> psycopg.sql.Composed:
    """The statement that subscribes a connection to one of protocol's notification channels."""
    return psycopg.sql.SQL(queries.get("channel_listen")).format(channel=psycopg.sql.Identifier(channel))


def now(conn: Conn) -> datetime:
    """The database's clock (`clock_timestamp()`), so replicas with skewed clocks agree on what is due."""
    row = conn.execute(queries.get("clock_now")).fetchone()
    assert row is not None
    at: datetime = row["now"]
    return at


def applied_versions(conn: Conn) -> set[int]:
    exists = conn.execute(queries.get("migration_table_exists")).fetchone()
    if not exists or not exists["e"]:
        return set()
    return {row["version"] for row in conn.execute(queries.get("migration_list"))}


def migrate(dsn_or_conn: str | Conn) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    The migration lock is held by the session for the whole run, not per migration: a second run waiting
    for it would otherwise slip in between two migrations of the first and apply the next one itself, so
    which process applied what depended on timing."""
    conn = connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    applied: list[str] = []
    try:
        conn.execute(queries.get("migration_lock"))
        try:
            for migration in migrations():
                with conn.transaction():
                    conn.execute(queries.get("migration_schema_create"))
                    conn.execute(queries.get("migration_table_create"))
                    if migration.version in applied_versions(conn):
                        continue
                    conn.execute(psycopg.sql.SQL(migration.sql))
                    conn.execute(queries.get("migration_record"),
                                 {"version": migration.version, "name": migration.name})
                    applied.append(migration.name)
        finally:
            if not conn.broken:  # a lost connection took its lock with it
                conn.execute(queries.get("migration_unlock"))
    finally:
        if isinstance(dsn_or_conn, str):
            conn.close()
    return applied
