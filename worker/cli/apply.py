"""`kubetasks apply -f`, and `apply_all`: the one all-or-nothing way manifests become stored schedules.

`kubetasks apply` and `kubetasks dev` both go through `apply_all`: every document is checked first and every
problem reported at once (file, document index, field); only when all are valid are they stored, in one
transaction, so a folder of manifests is never half applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import db
from ..errors import InvalidInput
from ..settings import Settings
from .common import load_actor_modules, settings_of

if TYPE_CHECKING:
    from ..manifests import ScheduleManifest

    Loaded = Sequence[tuple[str, ScheduleManifest]]  # (where it came from: 'file[index]', the manifest)

APPLY_HINT = " (pass --module, set KUBETASKS_WORKER__MODULES, or use --no-validate-actors)"


def check_all(loaded: Loaded, settings: Settings, *, validate_actors: bool = True, actor_hint: str = "") -> None:
    """Raise one `ManifestError` naming every manifest that cannot be stored; `actor_hint` is added to the fix
    of an unknown actor (each command knows its own way out)."""
    from .. import manifests, schedules  # lazy: `kubetasks worker` starts faster

    errors: list[InvalidInput] = []
    for source, manifest in loaded:
        try:
            schedules.validate(manifest.row_name, manifest.spec, validate_actor=validate_actors, settings=settings)
        except InvalidInput as exc:
            hint = actor_hint if exc.field == "spec.actor" else ""
            errors.append(InvalidInput(f"{source} {exc.field}", exc.problem, exc.fix + hint))
    if errors:
        raise manifests.ManifestError(errors)


def apply_all(loaded: Loaded, settings: Settings, *, validate_actors: bool = True, actor_hint: str = "",
              application_name: str = "kubetasks-cli") -> list[dict[str, Any]]:
    """Check every manifest, then store all of them in one transaction (connecting only once all are valid);
    returns each schedule's row with its `action`: created, configured or unchanged."""
    from .. import schedules  # lazy: `kubetasks worker` starts faster

    check_all(loaded, settings, validate_actors=validate_actors, actor_hint=actor_hint)
    with db.connect(settings.database, application_name=application_name) as conn, conn.transaction():
        return [schedules.apply(conn, m.row_name, m.spec, validate_actor=False, settings=settings)
                for _, m in loaded]


@click.command("apply")
@click.option("-f", "--filename", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Schedule manifest, or a folder of *.yaml/*.yml; repeatable.")
@click.option("--module", "modules", multiple=True, help="Module declaring actors (to validate them).")
@click.option("--no-validate-actors", is_flag=True, help="Store schedules whose actor is not importable here.")
@click.option("--dry-run", is_flag=True, help="Validate only; store nothing.")
@click.pass_context
def apply_cmd(ctx: click.Context, paths: tuple[Path, ...], modules: tuple[str, ...], no_validate_actors: bool,
              dry_run: bool) -> None:
    """Create or update schedules from manifests. Nothing is stored unless every document is valid."""
    from .. import manifests  # lazy: `kubetasks worker` starts faster

    settings = settings_of(ctx)
    if not no_validate_actors:
        load_actor_modules(settings, modules)
    loaded = manifests.load_sources(list(paths))
    if dry_run:
        check_all(loaded, settings, validate_actors=not no_validate_actors, actor_hint=APPLY_HINT)
        for _, manifest in loaded:
            click.echo(f"{manifest.row_name} valid (dry run)")
        return
    for row in apply_all(loaded, settings, validate_actors=not no_validate_actors, actor_hint=APPLY_HINT):
        click.echo(f"{row['name']} {row['action']}")
