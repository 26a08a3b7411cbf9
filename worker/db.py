"""Connections and schema migrations.

Migrations are numbered `.sql` files applied in order inside one transaction each; a transaction-level
advisory lock serialises concurrent `kubetasks migrate` runs, so two processes starting at once are safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row

from . import protocol

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Conn = psycopg.Connection[dict[str, Any]]


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


def connect(dsn: str, *, autocommit: bool = True, connect_timeout: float = 5.0,
            application_name: str = "kubetasks") -> Conn:
    return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row,
                           connect_timeout=max(1, int(connect_timeout)), application_name=application_name)


def applied_versions(conn: Conn) -> set[int]:
    exists = conn.execute("SELECT to_regclass('kubetasks.schema_migrations') IS NOT NULL AS e").fetchone()
    if not exists or not exists["e"]:
        return set()
    return {row["version"] for row in conn.execute("SELECT version FROM kubetasks.schema_migrations")}


def migrate(dsn_or_conn: str | Conn) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    conn = connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    applied: list[str] = []
    try:
        for migration in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (protocol.MIGRATION_LOCK,))
                conn.execute("CREATE SCHEMA IF NOT EXISTS kubetasks")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS kubetasks.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())")
                if migration.version in applied_versions(conn):
                    continue
                conn.execute(psycopg.sql.SQL(migration.sql))
                conn.execute("INSERT INTO kubetasks.schema_migrations (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))
                applied.append(migration.name)
    finally:
        if isinstance(dsn_or_conn, str):
            conn.close()
    return applied

