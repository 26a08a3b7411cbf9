"""Whether kubetasks traces, and the one door to its OpenTelemetry code (`spans.py`, the `tracing` extra).

Tracing is off unless KUBETASKS_TRACING__ENABLED: the OpenTelemetry API may be installed for other reasons
(FastAPI depends on it), so its presence says nothing about wanting spans. Off, nothing imports OpenTelemetry
and `get` returns None: enqueue checks that once per call, the executor once at start-up (it wraps its execute
and its outcome sink only when traced), so an untraced task pays nothing per attempt.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .errors import InvalidInput

if TYPE_CHECKING:
    from .settings import Settings
    from .spans import Tracing


def get(settings: Settings) -> Tracing | None:
    """The span maker when tracing is enabled, else None. Enabled without OpenTelemetry installed is refused."""
    if not settings.tracing.enabled:
        return None
    return _tracing()


@functools.cache
def _tracing() -> Tracing:
    try:
        from .spans import Tracing
    except ImportError as exc:
        raise InvalidInput("tracing.enabled", f"is true but OpenTelemetry cannot be imported ({exc})",
                           "pip install 'kubetasks[tracing]', or unset KUBETASKS_TRACING__ENABLED") from None
    return Tracing()
