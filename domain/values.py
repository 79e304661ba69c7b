"""JSON values from users: what a run input, signal or event may hold.

JSON has no NaN or Infinity; encoders write them as ``null`` and a run would
silently see something else than was sent. Such values are refused, as is
anything nested deeper than ``MAX_DEPTH`` (a template or input that would
exhaust the stack of whoever walks it).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidInput

MAX_DEPTH = 64
SHOWN_PATH_CHARS = 32  # a path 64 levels deep is too long for a one-line error


def check_json_value(value: Any, what: str = "value") -> Any:
    """Return ``value`` if it is plain JSON with finite numbers, at most MAX_DEPTH deep."""
    problem = json_problem(value)
    if problem:
        raise InvalidInput(f"{what}: {problem}")
    return value


def json_problem(value: Any) -> str:
    """What makes ``value`` unfit to travel as JSON, or ""."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        item, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels (at {short_path(where)})"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{item!r} is not a JSON number (at {where}); JSON has no NaN or Infinity"
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"object key {key!r} is not a string (at {where})"
                stack.append((child, depth + 1, f"{where}.{key}"))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
    return ""


def short_path(where: str) -> str:
    """A JSON path (``$.a[0]...``) cut to a length one line can show."""
    return where if len(where) <= SHOWN_PATH_CHARS else where[:SHOWN_PATH_CHARS] + "..."
