"""Dot-paths into JSON values ("data.user.id"): a small grammar, no eval."""

from __future__ import annotations

import re
from typing import Any

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_SEGMENTS = 32


class PathNotFound(LookupError):
    pass


def is_valid_path(path: str) -> bool:
    parts = path.split(".")
    return 0 < len(parts) <= MAX_SEGMENTS and all(_SEGMENT.fullmatch(p) for p in parts)


def extract_dot_path(data: Any, path: str) -> Any:
    """Walk objects by key and arrays by index; raise PathNotFound when absent."""
    current = data
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise PathNotFound(path)
    return current
