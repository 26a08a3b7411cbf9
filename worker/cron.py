"""Cron arithmetic: the ticks of a five-field expression (or macro) in a time zone, as UTC instants.

Apart from the firing engine (`scheduler`) and the schedule store (`schedules`) because both need it and
neither should pull the other in; pure functions, no database (the import contract keeps it so).

Arithmetic is croniter's on zone-aware datetimes, with one correction for daylight saving: when clocks go
back, a wall-clock time that happens twice fires only the first time, unless the hour field is '*' (an
hourly job then runs in both hours, as elapsed time demands). When clocks go forward, croniter moves a tick
inside the gap to the first instant after it, so a 02:30 daily job runs at 03:00 that day instead of
vanishing. After a long outage `latest_due` walks at most WALK_LIMIT ticks one by one, then jumps straight
to the latest. All times returned are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from . import protocol

WALK_LIMIT = 1000  # ticks walked one by one before jumping straight to the latest one


def expand(cron: str) -> str:
    """The five-field expression a macro stands for (anything else unchanged)."""
    return protocol.CRON_MACROS.get(cron.strip().lower(), cron)


def _repeated(tick: datetime, cron: str) -> bool:
    """A second occurrence of a wall-clock time (clocks went back) that a fixed-hour schedule must not rerun."""
    if expand(cron).split()[1].startswith("*"):
        return False
    return tick.fold == 1 and tick.replace(fold=0).utcoffset() != tick.utcoffset()


def next_tick(cron: str, time_zone: str, after: datetime) -> datetime | None:
    """The first tick strictly after `after`, in UTC; None when the expression never fires again."""
    it = croniter(expand(cron), after.astimezone(ZoneInfo(time_zone)))
    for _ in range(3):  # at most one repeated time to step over
        try:
            tick: datetime = it.get_next(datetime)
        except (ValueError, KeyError):  # croniter's "failed to find next date" (CroniterBadDateError)
            return None
        if not _repeated(tick, cron):
            return tick.astimezone(UTC)
    return None


def prev_tick(cron: str, time_zone: str, at_or_before: datetime) -> datetime | None:
    """The last tick at or before `at_or_before`, in UTC."""
    it = croniter(expand(cron), at_or_before.astimezone(ZoneInfo(time_zone)))
    for _ in range(3):
        try:
            tick: datetime = it.get_prev(datetime)
        except (ValueError, KeyError):
            return None
        if not _repeated(tick, cron):
            break
    else:
        return None
    following = next_tick(cron, time_zone, tick)
    if following is not None and following <= at_or_before:
        return following  # croniter's get_prev is strict: `at_or_before` itself was a tick
    return tick.astimezone(UTC)


def latest_due(cron: str, time_zone: str, first: datetime, now: datetime) -> tuple[datetime, int]:
    """The latest tick in [first, now] and how many ticks before it were missed; `first` is a due tick."""
    tick, missed = first, 0
    for _ in range(WALK_LIMIT):
        following = next_tick(cron, time_zone, tick)
        if following is None or following > now:
            return tick, missed
        tick, missed = following, missed + 1
    latest = prev_tick(cron, time_zone, now) or tick
    return latest, missed + 1  # "at least": the exact count is not worth walking for
