"""Cron arithmetic: the ticks of a five-field expression (or macro) in a time zone, as UTC instants.

Apart from the firing engine (`scheduler`) and the schedule store (`schedules`) because both need it and
neither should pull the other in; pure functions, no database (the import contract keeps it so).

Arithmetic is croniter's on zone-aware datetimes, with one correction for daylight saving: when clocks go
back, a wall-clock time that happens twice fires only the first time, unless the hour field is '*' (an
hourly job then runs in both hours, as elapsed time demands). When clocks go forward, croniter moves a tick
inside the gap to the first instant after it, so a 02:30 daily job runs at 03:00 that day instead of
vanishing. After a long outage `latest_due` walks at most WALK_LIMIT ticks one by one, then jumps straight
to the latest. All times returned are UTC.

`@every <duration>` (what a Schedule's `every` is stored as) ticks at fixed steps from its anchor, the
schedule's startTime or else the Unix epoch, so every scheduler computes the same ticks; the time zone does
not matter to it. `start` / `end` bound the ticks of either kind: none before `start`, none after `end`.

`jitter_delay` spreads the runs of a tick: a delay derived from a hash of (schedule, tick), so every
scheduler gives one tick the same eta while the tick itself stays the nominal time.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from . import durations, protocol

WALK_LIMIT = 1000  # ticks walked one by one before jumping straight to the latest one
EVERY = "@every "  # prefix of interval expressions: "@every 90m"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the anchor of intervals without a start time
_TINY = timedelta(microseconds=1)


def every(seconds: int) -> str:
    """The stored expression of an interval schedule."""
    return EVERY + durations.format_seconds(seconds)


def interval_of(cron: str) -> timedelta | None:
    """The step of an `@every` expression, None for cron."""
    if not cron.startswith(EVERY):
        return None
    return timedelta(seconds=durations.parse(cron[len(EVERY):]))


def jitter_delay(name: str, tick: datetime, jitter: float | None) -> timedelta:
    """A delay in [0, jitter] seconds, the same for one (schedule, tick) wherever it is computed."""
    if not jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{name}\n{tick.astimezone(UTC).isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(milliseconds=round(fraction * jitter * 1000))


def expand(cron: str) -> str:
    """The five-field expression a macro stands for (anything else unchanged)."""
    return protocol.CRON_MACROS.get(cron.strip().lower(), cron)


def _repeated(tick: datetime, cron: str) -> bool:
    """A second occurrence of a wall-clock time (clocks went back) that a fixed-hour schedule must not rerun."""
    if expand(cron).split()[1].startswith("*"):
        return False
    return tick.fold == 1 and tick.replace(fold=0).utcoffset() != tick.utcoffset()


def next_tick(cron: str, time_zone: str, after: datetime, start: datetime | None = None,
              end: datetime | None = None) -> datetime | None:
    """The first tick strictly after `after` (and not before `start`), in UTC; None when the expression never
    fires again (or only after `end`)."""
    if start is not None and after < start:
        after = start - _TINY
    tick = _next(cron, time_zone, after, start)
    return None if tick is None or (end is not None and tick > end) else tick


def _next(cron: str, time_zone: str, after: datetime, start: datetime | None) -> datetime | None:
    step = interval_of(cron)
    if step is not None:
        anchor = start or EPOCH
        return anchor + ((after - anchor) // step + 1) * step
    it = croniter(expand(cron), after.astimezone(ZoneInfo(time_zone)))
    for _ in range(3):  # at most one repeated time to step over
        try:
            tick: datetime = it.get_next(datetime)
        except (ValueError, KeyError):  # croniter's "failed to find next date" (CroniterBadDateError)
            return None
        if not _repeated(tick, cron):
            return tick.astimezone(UTC)
    return None


def prev_tick(cron: str, time_zone: str, at_or_before: datetime, start: datetime | None = None,
              end: datetime | None = None) -> datetime | None:
    """The last tick at or before `at_or_before` (and `end`, not before `start`), in UTC."""
    if end is not None and at_or_before > end:
        at_or_before = end
    tick = _prev(cron, time_zone, at_or_before, start)
    return None if tick is None or (start is not None and tick < start) else tick


def _prev(cron: str, time_zone: str, at_or_before: datetime, start: datetime | None) -> datetime | None:
    step = interval_of(cron)
    if step is not None:
        anchor = start or EPOCH
        return anchor + ((at_or_before - anchor) // step) * step
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


def latest_due(cron: str, time_zone: str, first: datetime, now: datetime, start: datetime | None = None,
               end: datetime | None = None) -> tuple[datetime, int]:
    """The latest tick in [first, now] and how many ticks before it were missed; `first` is a due tick."""
    tick, missed = first, 0
    for _ in range(WALK_LIMIT):
        following = next_tick(cron, time_zone, tick, start, end)
        if following is None or following > now:
            return tick, missed
        tick, missed = following, missed + 1
    latest = prev_tick(cron, time_zone, now, start, end) or tick
    return latest, missed + 1  # "at least": the exact count is not worth walking for


def ticks_between(cron: str, time_zone: str, first: datetime, last: datetime, start: datetime | None = None,
                  end: datetime | None = None, limit: int = WALK_LIMIT) -> list[datetime]:
    """The ticks in [first, last], oldest first, at most `limit` (the oldest ones)."""
    found: list[datetime] = []
    tick = next_tick(cron, time_zone, first - _TINY, start, end)
    while tick is not None and tick <= last and len(found) < limit:
        found.append(tick)
        tick = next_tick(cron, time_zone, tick, start, end)
    return found
