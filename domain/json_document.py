"""A JSON document a user wrote, read strictly: where it nests too deeply.

JSON decoders (msgspec's and the stdlib's) recurse once per level, so a
document nested thousands of levels deep fails with a RecursionError that
names nothing. ``where_too_deep`` says where instead, as a path like
``$.steps[1].input``, scanning the text without recursing. It leaves
malformed JSON to the decoder.
"""

from __future__ import annotations

import json
import re

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


def json_path(path: list[str | int]) -> str:
    """``["steps", 1, "input"]`` as ``$.steps[1].input``."""
    parts = ["$"]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{json.dumps(part)}]")
    return "".join(parts)


def _key(token: str) -> str:
    try:
        return json.loads(token)
    except ValueError:
        return token


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
