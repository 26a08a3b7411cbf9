"""Example actors for `kubetasks dev -f examples/`: one succeeds, one reports a warning, one fails once.

The worker imports this file because `kubetasks dev` lists it in the worker's modules; in a real
deployment you would list your own modules in KUBETASKS_WORKER__MODULES.
"""

from __future__ import annotations

import logging

from kubetasks.worker import context
from kubetasks.worker.registry import actor

log = logging.getLogger(__name__)


@actor(name="examples.hello")
def hello(name: str = "world") -> str:
    """Always succeeds."""
    log.info("saying hello to %s", name)
    return f"hello, {name}"


@actor(name="examples.inventory")
def inventory(warehouse: str, low_stock_below: int = 5) -> dict[str, object]:
    """Succeeds, but reports a warning: the run ends in state `warning`, visible in `tasks show`."""
    stock = {"bolts": 120, "nuts": 3, "washers": 2}
    low = sorted(item for item, count in stock.items() if count < low_stock_below)
    log.info("counted %d items in %s", len(stock), warehouse)
    if low:
        context.current().warning(f"{warehouse}: low stock of {', '.join(low)}")
    return {"warehouse": warehouse, "low": low}


@actor(name="examples.flaky", max_retries=3)
def flaky(service: str = "payments") -> str:
    """Fails on its first attempt and succeeds on the retry, to show retries and per-attempt logs."""
    attempt = context.current().attempt
    log.info("calling %s, attempt %d", service, attempt)
    if attempt == 1:
        raise ConnectionError(f"{service} did not answer (simulated; the retry will work)")
    return f"{service} answered on attempt {attempt}"
