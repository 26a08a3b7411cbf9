"""What a running task can see and say: its context, its log, and how it reports warnings and errors.

Each attempt's log is captured per attempt (logging records and `print`), so concurrent tasks in one
process never mix logs: the running attempt is a context variable, which each task thread and each
asyncio task of an async actor has its own of. `time.sleep` is made cancellable inside task threads, so a
task sleeping past its time limit (or cancelled) stops at once instead of when the sleep ends.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .settings import Settings

LOG_LIMIT = 64 * 1024  # characters kept per attempt; the tail wins


class TaskError(Exception):
    """Raise to end the task in `error` without retrying it."""


class TaskWarning(Exception):
    """Raise to end the task in `warning` without retrying it."""


class Interrupted(BaseException):
    """Raised inside a task thread to stop it."""


class TimeLimitExceeded(Interrupted):
    pass


class Cancelled(Interrupted):
    pass


class WorkerShutdown(Interrupted):
    """The worker is stopping before the attempt finished: the task goes back to the queue."""


@dataclass
class TaskContext:
    task_id: int
    actor: str
    attempt: int
    max_retries: int
    time_limit: float
    settings: Settings | None = None  # of the worker running the task (built-in actors read their limits here)
    stop_reason: type[Interrupted] = TimeLimitExceeded
    reported: str | None = None  # 'warning' or 'error' when the task said so itself
    messages: list[str] = field(default_factory=list)
    _log: list[str] = field(default_factory=list)
    _log_size: int = 0
    _partial: str = ""  # printed text not yet ended by a newline
    _stop: threading.Event | None = None  # made on first use: most attempts are never interrupted nor sleep

    @property
    def stop(self) -> threading.Event:
        """Set once the attempt is told to stop (time limit, cancel, shutdown); what a cancellable sleep waits on."""
        event = self._stop
        if event is None:
            with _stop_lock:
                if self._stop is None:
                    self._stop = threading.Event()
                event = self._stop
        return event

    @property
    def stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def log(self, message: str) -> None:
        """Append a line to this attempt's log."""
        self._log.append(message)
        self._log_size += len(message) + 1
        while self._log_size > LOG_LIMIT and len(self._log) > 1:
            self._log_size -= len(self._log.pop(0)) + 1

    def warning(self, message: str) -> None:
        """Finish as `warning` (not retried) once the task returns."""
        self.log(f"WARNING {message}")
        self.messages.append(message)
        if self.reported != "error":
            self.reported = "warning"

    def error(self, message: str) -> None:
        """Finish as `error` (not retried) once the task returns."""
        self.log(f"ERROR {message}")
        self.messages.append(message)
        self.reported = "error"

    @property
    def log_text(self) -> str:
        return "\n".join(self._log)

    @property
    def silent(self) -> bool:
        """Nothing logged nor reported: the attempt has nothing to tell but how it ended."""
        return not self._log and self.reported is None

    def interrupt(self, reason: type[Interrupted]) -> None:
        self.stop_reason = reason
        self.stop.set()


_stop_lock = threading.Lock()
_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("kubetasks_task", default=None)


def current() -> TaskContext:
    """The context of the task running in this thread (or asyncio task, for an async actor)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("kubetasks.worker.context.current() called outside a task")
    return ctx


def current_or_none() -> TaskContext | None:
    return _current.get()


def bind(ctx: TaskContext | None) -> None:
    _current.set(ctx)


class _TaskLogHandler(logging.Handler):
    """Copies log records emitted inside a task into that attempt's log."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current_or_none()
        if ctx is not None:
            try:
                ctx.log(self.format(record))
            except Exception:  # logging must never break a task
                self.handleError(record)


class _TaskStream(io.TextIOBase):
    """Stands in for sys.stdout/stderr: inside a task, lines go to its log; elsewhere, to the real stream."""

    def __init__(self, real: TextIO) -> None:
        self.real = real

    def write(self, text: str) -> int:
        ctx = current_or_none()
        if ctx is None:
            return self.real.write(text)
        *lines, rest = (ctx._partial + text).split("\n")
        for line in lines:
            ctx.log(line)
        ctx._partial = rest
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def isatty(self) -> bool:
        return self.real.isatty()


_real_sleep = time.sleep
_installed = False


def _cancellable_sleep(seconds: float) -> None:
    ctx = current_or_none()
    if ctx is None:
        _real_sleep(seconds)
        return
    if ctx.stop.wait(max(0.0, seconds)):
        raise ctx.stop_reason()


def install() -> None:
    """Route task logs to their attempt and make `time.sleep` cancellable in task threads (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    handler = _TaskLogHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
        logging.getLogger().setLevel(logging.INFO)
    sys.stdout = _TaskStream(sys.stdout)
    sys.stderr = _TaskStream(sys.stderr)
    time.sleep = _cancellable_sleep  # type: ignore[assignment]

