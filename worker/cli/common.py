"""What every command needs: this invocation's settings, a database connection, and name helpers.

The root command builds one `Settings` (environment plus `--database-url`) and keeps it on the click
context; commands take it from there and pass it on explicitly, so nothing re-reads the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
import psycopg

from .. import db, registry
from ..settings import Settings
from .output import connection_error, fail


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


@contextmanager
def connect(ctx: click.Context) -> Iterator[db.Conn]:
    settings = settings_of(ctx)
    try:
        conn = db.connect(settings.database, application_name="kubetasks-cli")
    except psycopg.OperationalError as exc:
        fail(connection_error(settings.database.url, exc))
    with conn:
        yield conn


def schedule_key(name: str) -> str:
    """Accept 'name' for 'default/name', as kubectl does."""
    from .. import manifests  # lazy: `kubetasks worker` starts faster

    return name if "/" in name else manifests.schedule_name("default", name)


def load_actor_modules(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Import the built-in actors and the user's modules, so actor names can be checked here."""
    if os.getcwd() not in sys.path:  # a console script does not see the current directory, `python -m` does
        sys.path.insert(0, os.getcwd())
    registry.load_modules([*settings.worker.modules, *extra])
