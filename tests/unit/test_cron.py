"""Cron arithmetic without a database: macros, daylight-saving changes and the walk limit after outages."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from kubetasks.worker import cron, protocol


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize("macro", sorted(protocol.CRON_MACROS))
def test_macros_tick_like_the_expression_they_stand_for(macro: str) -> None:
    after = utc(2030, 1, 7, 10, 0, 30)
    assert cron.expand(macro.upper()) == protocol.CRON_MACROS[macro]
    assert cron.next_tick(macro, "UTC", after) == cron.next_tick(protocol.CRON_MACROS[macro], "UTC", after)


def test_spring_forward_moves_a_tick_in_the_gap_to_the_end_of_it() -> None:
    # Europe/Berlin jumps 02:00 -> 03:00 on 2030-03-31: 02:30 does not exist, 03:00 CEST is 01:00 UTC.
    assert cron.next_tick("30 2 * * *", "Europe/Berlin", utc(2030, 3, 30, 12)) == utc(2030, 3, 31, 1)
    assert cron.next_tick("30 2 * * *", "Europe/Berlin", utc(2030, 3, 31, 1)) == utc(2030, 4, 1, 0, 30)


def test_fall_back_fires_a_fixed_hour_once_but_every_hour_twice() -> None:
    # Europe/Berlin goes 03:00 -> 02:00 on 2030-10-27: 02:30 CEST (00:30 UTC) and 02:30 CET (01:30 UTC).
    assert cron.next_tick("30 2 * * *", "Europe/Berlin", utc(2030, 10, 27, 0, 30)) == utc(2030, 10, 28, 1, 30)
    hourly = [utc(2030, 10, 26, 23)]
    for _ in range(3):
        following = cron.next_tick("0 * * * *", "Europe/Berlin", hourly[-1])
        assert following is not None
        hourly.append(following)
    assert hourly[1:] == [utc(2030, 10, 27, 0), utc(2030, 10, 27, 1), utc(2030, 10, 27, 2)]  # 02:00 twice


def test_prev_tick_includes_the_instant_itself() -> None:
    assert cron.prev_tick("0 * * * *", "UTC", utc(2030, 1, 1, 5)) == utc(2030, 1, 1, 5)
    assert cron.prev_tick("0 * * * *", "UTC", utc(2030, 1, 1, 5, 59)) == utc(2030, 1, 1, 5)


def test_latest_due_counts_missed_ticks_and_jumps_past_the_walk_limit() -> None:
    assert cron.latest_due("0 * * * *", "UTC", utc(2030, 1, 1, 1), utc(2030, 1, 1, 3, 30)) == (utc(2030, 1, 1, 3), 2)
    start = utc(2030, 1, 1)
    tick, missed = cron.latest_due("* * * * *", "UTC", start, start + timedelta(minutes=5 * cron.WALK_LIMIT))
    assert tick == start + timedelta(minutes=5 * cron.WALK_LIMIT) and missed > cron.WALK_LIMIT


def test_an_expression_that_never_fires_again_has_no_next_tick() -> None:
    assert cron.next_tick("0 0 30 2 *", "UTC", utc(2030, 1, 1)) is None  # 30 February


def test_cron_and_the_schedule_store_do_not_load_the_firing_engine_or_the_database() -> None:
    code = ("import sys; from kubetasks.worker import cron; assert 'kubetasks.worker.db' not in sys.modules;"
            " assert 'psycopg' not in sys.modules; from kubetasks.worker import schedules;"
            " assert 'kubetasks.worker.scheduler' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
