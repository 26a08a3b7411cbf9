"""Durations as manifests write them: Go/Kubernetes style `90m`, `1h30m`, `45s`, `2d`, or whole seconds.

Pure; one parser for `every`, `jitter` and `catchupWindow` so they accept the same spellings.
"""

from __future__ import annotations

import re
from typing import Final

_PART: Final = re.compile(r"(\d+)([dhms])")
_WHOLE: Final = re.compile(r"^(\d+[dhms])+$")
_UNIT: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}
FIX: Final = "write a whole number of seconds or units d, h, m, s, e.g. '90m', '1h30m', '45s'"


def parse(text: str | int) -> int:
    """Whole seconds of `text`; ValueError (with the problem) when it is not a duration."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    value = str(text).strip().replace(" ", "")
    if value.isdigit():
        return int(value)
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration")
    return sum(int(n) * _UNIT[unit] for n, unit in _PART.findall(value))


def format_seconds(seconds: float) -> str:
    """The shortest spelling `parse` reads back: 5400 -> '1h30m'."""
    rest, out = int(seconds), ""
    for unit, size in _UNIT.items():
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"
