"""sql/schema.sql is the schema the migrations add up to: all migrations in one database, schema.sql in
another, and `pg_dump --schema-only` of the kubetasks schema must read the same (tables, column order,
defaults, constraints, indexes, functions, triggers, enum values), as must the migration bookkeeping."""

from __future__ import annotations

import os
import re
import subprocess
from importlib import resources

import pytest

from kubetasks.worker import db, pgserver

# Lines of pg_dump output that differ between any two dumps: comments and the random \restrict key.
_NOISE = re.compile(r"^(--.*|\\(un)?restrict .*)$")


def schema_sql() -> str:
    return (resources.files("kubetasks.worker.sql") / "schema.sql").read_text()


def dump(server: pgserver.LocalPostgres, dsn: str) -> str:
    pg_dump = server.bindir / "pg_dump"
    if not pg_dump.exists():
        pytest.skip(f"no pg_dump beside {server.bindir}")
    out = subprocess.run([str(pg_dump), "--schema-only", "--schema=kubetasks", "--no-owner", "--no-privileges",
                          "--dbname", dsn], check=True, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if line.strip() and not _NOISE.match(line))


def bookkeeping(dsn: str) -> list[tuple[int, str]]:
    with db.connect(dsn) as conn:
        rows = conn.execute("SELECT version, name FROM kubetasks.schema_migrations ORDER BY version").fetchall()
    return [(row["version"], row["name"]) for row in rows]


def test_schema_sql_is_what_the_migrations_make(pg_server: pgserver.LocalPostgres) -> None:
    migrated = pg_server.create_database(f"schema_migrated_{os.getpid()}")
    declared = pg_server.create_database(f"schema_declared_{os.getpid()}")
    assert db.migrate(migrated) == [m.name for m in db.migrations()]
    with db.connect(declared) as conn:
        conn.execute(schema_sql())  # type: ignore[arg-type]  # a file we ship, several statements
    assert dump(pg_server, declared) == dump(pg_server, migrated)
    assert bookkeeping(declared) == bookkeeping(migrated) == [(m.version, m.name) for m in db.migrations()]
    assert db.migrate(declared) == []  # nothing left to apply: schema.sql names every migration


def test_a_second_migrate_applies_nothing_and_changes_nothing(pg_server: pgserver.LocalPostgres) -> None:
    dsn = pg_server.create_database(f"schema_again_{os.getpid()}")
    db.migrate(dsn)
    before = dump(pg_server, dsn)
    assert db.migrate(dsn) == []
    assert dump(pg_server, dsn) == before
