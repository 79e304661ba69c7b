"""Go-style durations ("1m30s", "250ms", "2h") and integer nanoseconds.

Definitions accept both forms; the model stores integer nanoseconds.
"""

from __future__ import annotations

import re

from .errors import InvalidDuration

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,
    "μs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX = 2**63 - 1


def parse_duration(value: object) -> int:
    """Return ``value`` as integer nanoseconds, or raise InvalidDuration."""
    if isinstance(value, bool):
        raise InvalidDuration(value, "a boolean is not a duration")
    if isinstance(value, int):
        if value < 0:
            raise InvalidDuration(value, "must not be negative")
        if value > _MAX:
            raise InvalidDuration(value, "too large")
        return value
    if not isinstance(value, str):
        raise InvalidDuration(value, "expected a string or an integer")
    return _parse_string(value)


def _parse_string(text: str) -> int:
    if text.startswith("-"):
        raise InvalidDuration(text, "must not be negative")
    body = text[1:] if text.startswith("+") else text
    if body == "0":  # Go's one unitless form, with or without "+"
        return 0
    if not body:
        raise InvalidDuration(text)
    total, pos = 0.0, 0
    exact = 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            raise InvalidDuration(text)
        number, unit = match.groups()
        if "." in number:
            total += float(number) * _UNITS[unit]
        else:
            exact += int(number) * _UNITS[unit]
        pos = match.end()
    if pos != len(body):
        raise InvalidDuration(text)
    result = exact + round(total)
    if result > _MAX:
        raise InvalidDuration(text, "too large")
    return result


def format_duration(ns: int) -> str:
    """Format nanoseconds the way Go prints a time.Duration ("1m30s", "250ms")."""
    if ns == 0:
        return "0s"
    if ns < MICROSECOND:
        return f"{ns}ns"
    if ns < MILLISECOND:
        return _trim(ns / MICROSECOND) + "µs"
    if ns < SECOND:
        return _trim(ns / MILLISECOND) + "ms"
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    seconds = _trim(rest / SECOND) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def _trim(x: float) -> str:
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text or "0"
