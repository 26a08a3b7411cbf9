"""Retry and outcome policy on a fake clock: exact times, no sleeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from kubetasks.worker import policies
from kubetasks.worker.context import Cancelled, TaskContext, TaskError, TaskWarning, TimeLimitExceeded, WorkerShutdown

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ctx(attempt: int = 1, max_retries: int = 3) -> TaskContext:
    return TaskContext(task_id=7, actor="a", attempt=attempt, max_retries=max_retries, time_limit=5)


def decide(c: TaskContext, **kwargs: object) -> policies.Outcome:
    return policies.decide(c, now=NOW, backoff_base=1.0, backoff_max=60.0, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 0.5, 1), (2, 1, 2), (3, 2, 4), (7, 30, 60), (30, 30, 60)])
def test_backoff_doubles_with_equal_jitter_and_is_capped(attempt: int, low: float, high: float) -> None:
    rng = random.Random(42)
    delays = [policies.backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 2  # really jittered


def test_exception_retries_at_backoff_eta_while_retries_remain() -> None:
    try:
        raise ValueError("nope")
    except ValueError as exc:
        outcome = decide(ctx(attempt=2), raised=exc)
    expected = policies.backoff_delay(2, 1.0, 60.0, random.Random(1))
    assert (outcome.state, outcome.reason) == ("running", "Retrying")
    assert outcome.eta == NOW + timedelta(seconds=expected)
    assert outcome.error == "ValueError: nope" and "Traceback" in outcome.log


def test_exception_on_last_attempt_fails() -> None:
    outcome = decide(ctx(attempt=4, max_retries=3), raised=ValueError("nope"))
    assert (outcome.state, outcome.reason, outcome.eta) == ("error", "Failed", None)


@pytest.mark.parametrize(("raised", "state", "reason"), [
    (TaskWarning("w"), "warning", "SucceededWithWarnings"),
    (TaskError("e"), "error", "Failed"),
    (TimeLimitExceeded(), "error", "TimedOut"),
    (Cancelled(), "cancelled", "Cancelled"),
])
def test_reported_and_interrupted_outcomes_are_never_retried(raised: BaseException, state: str, reason: str) -> None:
    outcome = decide(ctx(attempt=1, max_retries=5), raised=raised)
    assert (outcome.state, outcome.reason, outcome.eta) == (state, reason, None)


def test_worker_shutdown_requeues_now_without_backoff() -> None:
    outcome = decide(ctx(attempt=1), raised=WorkerShutdown())
    assert (outcome.state, outcome.reason, outcome.eta) == ("running", "WorkerLost", NOW)


def test_warning_reported_through_context_keeps_result() -> None:
    c = ctx()
    c.warning("low disk")
    outcome = decide(c, returned={"ok": 1})
    assert (outcome.state, outcome.error, outcome.result) == ("warning", "low disk", '{"ok": 1}')


def test_plain_success_leaves_no_attempt_row_but_a_retry_or_log_does() -> None:
    assert not decide(ctx(), returned=None).worth_recording
    logged = ctx()
    logged.log("hello")
    assert decide(logged, returned=None).worth_recording
    assert decide(ctx(attempt=2), returned=None).worth_recording


def test_a_silent_success_is_the_same_outcome_as_a_logged_one_without_its_log() -> None:
    logged = ctx()
    logged.log("hello")
    assert decide(ctx(), returned=None, started_at=NOW) == decide(logged, returned=None, started_at=NOW)._replace(
        log="")
    reported = ctx()
    reported.error("bad input")  # reported with nothing returned: not a success
    assert (decide(reported, returned=None).state, decide(reported, returned=None).error) == ("error", "bad input")


def test_oversized_or_unserialisable_result_is_dropped_with_a_note() -> None:
    big = decide(ctx(), returned="x" * (policies.RESULT_LIMIT + 10))
    assert big.result is None and "result not stored" in big.log
