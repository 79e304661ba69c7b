"""W3C trace context values a caller hands a run: ``traceparent``, ``tracestate``, ``baggage``.

Each parser returns the value as the run records it, or None when it is
malformed: a malformed value is dropped (the caller logs it) and never fails
a run. A ``tracestate`` only means something next to the ``traceparent`` it
came with; ``baggage`` stands on its own.

    traceparent  00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, ids not all zero
    tracestate   up to 32 ``key=value`` members, comma-separated (W3C Trace Context)
    baggage      up to 64 ``key=value[;property]`` members, 8192 bytes (W3C Baggage)
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_STATE_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_STATE_MEMBER = re.compile(_STATE_KEY + r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_MEMBER = re.compile(
    rf"({_TOKEN})[ \t]*=[ \t]*([\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)[ \t]*((?:;[^,]*)?)"
)
MAX_STATE_MEMBERS = 32
MAX_BAGGAGE_MEMBERS = 64
MAX_BAGGAGE_BYTES = 8192


def parse_trace_parent(value: object) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of a valid W3C traceparent, else None (malformed or all-zero)."""
    return _parsed_trace_parent(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=1 << 14)  # a run's traceparent is parsed for each of its facts
def _parsed_trace_parent(value: str) -> tuple[str, str, str] | None:
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == "0" * 32 or match[2] == "0" * 16:
        return None
    return match[1], match[2], match[3]


def parse_trace_state(value: object) -> str | None:
    """A valid tracestate, its members joined by ","; "" for none; None if malformed."""
    if not isinstance(value, str):
        return None
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_STATE_MEMBERS or not all(_STATE_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [m.split("=", 1)[0] for m in members]
    return ",".join(members) if len(set(keys)) == len(keys) else None


def parse_baggage(value: object) -> str | None:
    """A valid baggage header, its members joined by ","; "" for none; None if malformed."""
    if not isinstance(value, str) or len(value.encode()) > MAX_BAGGAGE_BYTES:
        return None
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_BAGGAGE_MEMBERS or not all(_BAGGAGE_MEMBER.fullmatch(m) for m in members):
        return None
    return ",".join(members)


def baggage_items(value: str) -> dict[str, str]:
    """The entries of a (valid) baggage header: key -> value, percent-decoded, properties dropped."""
    items: dict[str, str] = {}
    for member in value.split(",") if value else ():
        match = _BAGGAGE_MEMBER.fullmatch(member.strip(" \t"))
        if match:
            items[match[1]] = unquote(match[2])
    return items
