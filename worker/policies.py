"""Retry and outcome policy: pure functions from what happened in an attempt to what is stored.

No database and no clock inside: the caller passes `now` and a random source, so tests assert exact times.
"""

from __future__ import annotations

import json
import random
import traceback
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from .context import (
    Cancelled,
    TaskContext,
    TaskError,
    TaskWarning,
    TimeLimitExceeded,
    WorkerShutdown,
)

RESULT_LIMIT = 64 * 1024  # bytes of JSON result kept


class Outcome(NamedTuple):
    """What an attempt came to; immutable (made on task threads, read on the loop), and a tuple because one is
    made per attempt: a frozen dataclass takes four times as long to build."""

    task_id: int
    attempt: int
    state: str  # 'running' means: retry at `eta`
    reason: str
    result: str | None = None  # JSON text
    error: str | None = None
    eta: datetime | None = None
    log: str = ""
    started_at: datetime | None = None

    @property
    def worth_recording(self) -> bool:
        """A plain first-time success leaves no attempt row: that keeps the hot path to one UPDATE."""
        return bool(self.log) or self.state != "successful" or self.attempt > 1


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): exponential, capped, with "equal jitter"
    (half fixed, half random) so that a burst of failures does not retry in lockstep."""
    ceiling = min(maximum, base * 2.0 ** max(0, attempt - 1))
    jitter = float((rng or random.Random()).uniform(0, ceiling / 2))
    return ceiling / 2 + jitter


def encode_result(value: Any) -> tuple[str | None, str | None]:
    """JSON of a task's return value, or a note why it was not kept."""
    if value is None:
        return None, None
    try:
        text = json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"result not stored: {exc}"
    if len(text) > RESULT_LIMIT:
        return None, f"result not stored: {len(text)} bytes of JSON is over {RESULT_LIMIT}"
    return text, None


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def decide(ctx: TaskContext, *, returned: Any = None, raised: BaseException | None = None,
           now: datetime, backoff_base: float, backoff_max: float, started_at: datetime | None = None,
           rng: random.Random | None = None) -> Outcome:
    """The outcome of one attempt."""
    if raised is None and returned is None and ctx.silent:  # most attempts: skip the general path below
        return Outcome(ctx.task_id, ctx.attempt, "successful", "Succeeded", started_at=started_at)
    common: dict[str, Any] = {"task_id": ctx.task_id, "attempt": ctx.attempt, "started_at": started_at}
    message = "; ".join(ctx.messages) or None
    if raised is None:
        result, note = encode_result(returned)
        if note:
            ctx.log(note)
        if ctx.reported == "error":
            return Outcome(state="error", reason="Failed", error=message, result=result, log=ctx.log_text, **common)
        if ctx.reported == "warning":
            return Outcome(state="warning", reason="SucceededWithWarnings", error=message, result=result,
                           log=ctx.log_text, **common)
        return Outcome(state="successful", reason="Succeeded", result=result, log=ctx.log_text, **common)
    if isinstance(raised, TimeLimitExceeded):
        error = f"time limit of {ctx.time_limit:g}s exceeded"
        ctx.log(error)
        return Outcome(state="error", reason="TimedOut", error=error, log=ctx.log_text, **common)
    if isinstance(raised, Cancelled):
        return Outcome(state="cancelled", reason="Cancelled", error="cancelled", log=ctx.log_text, **common)
    if isinstance(raised, WorkerShutdown):
        error = "the worker shut down during the attempt"
        ctx.log(error)
        if ctx.attempt <= ctx.max_retries:
            return Outcome(state="running", reason="WorkerLost", error=error, eta=now, log=ctx.log_text, **common)
        return Outcome(state="error", reason="WorkerLost", error=error, log=ctx.log_text, **common)
    if isinstance(raised, TaskWarning):
        ctx.log(f"WARNING {raised}")
        return Outcome(state="warning", reason="SucceededWithWarnings", error=str(raised), log=ctx.log_text,
                       **common)
    if isinstance(raised, TaskError):
        ctx.log(f"ERROR {raised}")
        return Outcome(state="error", reason="Failed", error=str(raised), log=ctx.log_text, **common)
    ctx.log("".join(traceback.format_exception(raised)).rstrip())
    error = _describe(raised)
    if ctx.attempt <= ctx.max_retries:
        delay = backoff_delay(ctx.attempt, backoff_base, backoff_max, rng)
        return Outcome(state="running", reason="Retrying", error=error, eta=now + timedelta(seconds=delay),
                       log=ctx.log_text, **common)
    return Outcome(state="error", reason="Failed", error=error, log=ctx.log_text, **common)
