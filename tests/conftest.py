"""Fixtures shared by every test tier: one real PostgreSQL per session, a fresh database per test.

The server is Debian's PostgreSQL (installed on demand when root), started on a temp dir and a free port.
A migrated template database is built once; each test gets `CREATE DATABASE … TEMPLATE`, fast and isolated.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import postgres_install
import pytest

from kubetasks.worker import db, pgserver
from kubetasks.worker.settings import Settings, get_settings

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.LocalPostgres]:
    bindir = postgres_install.ensure_postgres()
    if bindir is None:
        pytest.fail("PostgreSQL binaries not found; run `make test`, which installs them")
    server = pgserver.LocalPostgres(bindir, extra_settings={"max_locks_per_transaction": "64"})
    server.start()
    server.create_database("kubetasks_template")
    db.migrate(server.dsn("kubetasks_template"))
    yield server
    server.destroy()


@pytest.fixture
def dsn(pg_server: pgserver.LocalPostgres, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    url = pg_server.create_database(name, template="kubetasks_template")
    monkeypatch.setenv("KUBETASKS_DATABASE__URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture
def conn(dsn: str) -> Iterator[db.Conn]:
    with db.connect(dsn) as connection:
        yield connection


@pytest.fixture
def settings(dsn: str) -> Settings:
    return get_settings()
