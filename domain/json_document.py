"""A JSON document a user wrote, read strictly: where it nests too deeply, which key it repeats.

JSON decoders (msgspec's and the stdlib's) recurse once per level, so a
document nested thousands of levels deep fails with a RecursionError that
names nothing; and both keep the last of two equal keys in an object,
silently dropping the first. These checks say where instead, as a path
like ``$.steps[1].input``. ``where_too_deep`` scans the text without
recursing; ``duplicate_key_problem`` parses it (run it on text already
known to nest moderately). Both leave malformed JSON to the decoder.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A string (escapes included) or a character that opens, closes or separates.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]+")


def where_too_deep(data: bytes | str, max_depth: int) -> str:
    """The path at which ``data`` nests objects and arrays deeper than ``max_depth``, or ""."""
    path: list[str | int] = []  # per open container: the key or index being read in it
    last_string = ""
    for match in _TOKEN.finditer(_text(data)):
        token = match.group()
        if token in ("[", "{"):
            if len(path) == max_depth:
                return json_path(path)
            path.append(0 if token == "[" else "")
        elif token in ("]", "}"):
            if not path:
                return ""  # malformed: the decoder says how
            path.pop()
        elif token == "," and path and isinstance(path[-1], int):
            path[-1] += 1
        elif token == ":" and path:
            path[-1] = _key(last_string)
        elif token.startswith('"'):
            last_string = token
    return ""


def duplicate_key_problem(data: bytes | str) -> str:
    """The first key that occurs twice in one object of ``data``, and where, or ""."""
    try:
        document = json.loads(data, object_pairs_hook=_object)
    except (ValueError, RecursionError):
        return ""  # not JSON, or too deep: the decoder says so
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:  # depth first, in document order
        value, path = stack.pop()
        if isinstance(value, _Repeated):
            return f"duplicate key {json.dumps(value.repeated, ensure_ascii=False)} at {json_path(path)}"
        if isinstance(value, dict):
            children = [(child, [*path, key]) for key, child in value.items()]
        elif isinstance(value, list):
            children = [(child, [*path, index]) for index, child in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))
    return ""


def json_path(path: list[str | int]) -> str:
    """``["steps", 1, "input"]`` as ``$.steps[1].input``."""
    parts = ["$"]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(parts)


class _Repeated(dict[str, Any]):
    """An object in which some key occurred twice (the last value kept, as decoders do)."""

    repeated: str


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    marked = _Repeated(value)
    marked.repeated = _first_repeated(pairs)
    return marked


def _first_repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no key repeats")


def _key(token: str) -> str:
    try:
        return str(json.loads(token))
    except ValueError:
        return token


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
