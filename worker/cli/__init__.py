"""`kubetasks`: the command line. Thin: every command calls the queue/schedules API and prints the result.

Errors users can fix (bad input, unknown ids, no database) print one `error: …` line on stderr and exit 2,
without a traceback; `--json` gives machine-readable output where a listing or a record is printed.

This module holds the root command; each command group lives in its own module (`tasks`, `queues`,
`schedules`, `apply`, `runtime` for the long-running commands, `dev` for the local demo loop) and prints
through `output`. Modules a command needs only for itself are imported inside it, so `--help` stays fast.
"""

from __future__ import annotations

from typing import Any

import click
import psycopg

from ..dashboard.command import dashboard
from ..errors import KubetasksError
from ..settings import Settings
from . import apply, queues, runtime, schedules, tasks
from .common import settings_of
from .output import connection_error, fail


class _Cli(click.Group):
    """Turns the errors a user can fix into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KubetasksError as exc:
            fail(str(exc))
        except psycopg.errors.UndefinedTable:
            fail("the database has no kubetasks schema; run `kubetasks migrate` first")
        except psycopg.OperationalError as exc:
            fail(connection_error(settings_of(ctx).database.url, exc))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="KUBETASKS_DATABASE__URL", metavar="URL",
              help="PostgreSQL URL or DSN; overrides KUBETASKS_DATABASE__URL.")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Kubernetes-native background tasks on PostgreSQL."""
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError of a bad KUBETASKS_* variable
        fail(f"invalid KUBETASKS_* environment: {' '.join(str(exc).split())}")
    if database_url:
        # Passed down on the context (and to child processes as settings), never written to the environment.
        settings = settings.model_copy(update={"database": settings.database.model_copy(update={"url": database_url})})
    ctx.obj = settings


for _command in (runtime.migrate, runtime.worker, runtime.operator, runtime.dev, tasks.tasks, tasks.enqueue,
                 queues.queue_group, schedules.schedules_group, apply.apply_cmd, dashboard):
    main.add_command(_command)
main.add_command(queues.queue_group, name="queues")  # `kubetasks queues pause billing` reads naturally too
