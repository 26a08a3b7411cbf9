"""Overlap policies: what the ticks that come due together do, given the runs of the schedule still live.

Pure (no database): the scheduler, catch-up and backfill all ask `plan` with the ticks due, oldest first, and
how many runs are live and buffered; it answers as if the ticks arrived one after the other with no time
between them, so a catch-up of five ticks under Forbid starts one run, not five.

- Allow: every tick runs.
- Forbid: a tick is skipped while a run is live.
- Replace: live runs are cancelled and only the newest tick runs, at once.
- CancelOther: like Replace, but the new run is buffered until the cancelled attempt has stopped on its
  worker, so two runs never execute at the same time.
- BufferOne: a tick that finds a run live is buffered (queued behind it) unless one is buffered already; then
  it is skipped.
- BufferAll: every tick that finds a run live is buffered; buffered runs start one at a time, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, get_args

Policy = Literal["Allow", "Forbid", "Replace", "BufferOne", "BufferAll", "CancelOther"]
POLICIES: Final[tuple[Policy, ...]] = get_args(Policy)
CANCELLING: Final[tuple[Policy, ...]] = ("Replace", "CancelOther")
BUFFERED_REASON: Final = "Buffered"  # the task row's reason while a run waits for the live one to end
# Policies whose skipped ticks are misses (no run covers them), unlike the superseded ticks of Replace.
MISSING: Final[tuple[Policy, ...]] = ("Forbid", "BufferOne")


@dataclass(frozen=True)
class Plan:
    run: list[datetime] = field(default_factory=list)  # enqueue these ticks to run now
    buffer: list[datetime] = field(default_factory=list)  # enqueue these ticks as buffered runs
    skip: list[tuple[datetime, str]] = field(default_factory=list)  # (tick, why) not run at all
    missed: list[datetime] = field(default_factory=list)  # the skipped ticks no other run covers
    cancel_live: bool = False  # cancel the runs that are live first


def plan(policy: str, ticks: list[datetime], live: int, buffered: int = 0) -> Plan:
    """Which of `ticks` (oldest first) run, wait or are skipped when `live` runs are queued or running and
    `buffered` wait behind them."""
    result = Plan()
    if not ticks:
        return result
    if policy in CANCELLING:
        superseded = [(tick, f"superseded ({policy}) by the run of {ticks[-1].isoformat()}") for tick in ticks[:-1]]
        result.skip.extend(superseded)
        if policy == "CancelOther" and live:
            result.buffer.append(ticks[-1])
        else:
            result.run.append(ticks[-1])
        return Plan(run=result.run, buffer=result.buffer, skip=result.skip, cancel_live=live > 0)
    busy = live > 0
    for tick in ticks:
        if policy == "Allow" or not busy:
            result.run.append(tick)
            busy = True
        elif policy == "BufferAll" or (policy == "BufferOne" and buffered == 0):
            result.buffer.append(tick)
            buffered += 1
        else:
            why = "a run is still queued or running" if policy == "Forbid" else "a run is already buffered"
            result.skip.append((tick, f"skipped ({policy}): {why}"))
            result.missed.append(tick)
    return result
