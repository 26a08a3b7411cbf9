"""One adapter per benchmarked system, by kind (the order is the table's order)."""

from __future__ import annotations

from .base import System
from .kubetasks import Kubetasks
from .peers import Dramatiq, Graphile, PgQueuer, Procrastinate

SYSTEMS: dict[str, type[System]] = {
    "kubetasks": Kubetasks,
    "procrastinate": Procrastinate,
    "pgqueuer": PgQueuer,
    "dramatiq": Dramatiq,
    "graphile": Graphile,
}
