"""NATS subjects and KV key patterns: parsing and matching, with ``*`` and ``>``.

A subject (or KV key pattern) is tokens separated by ``.``; a token is ``*``
(exactly one token), ``>`` (one or more tokens, last only) or a literal
without spaces, wildcards or empty parts. KV keys also allow ``/``, ``=``, ``-``
and ``_`` in literals (the server's key grammar).
"""

from __future__ import annotations

import re

_SUBJECT_TOKEN = re.compile(r"^[^\s.*>]+$")
_KEY_TOKEN = re.compile(r"^[-/_=A-Za-z0-9]+$")


def subject_problem(subject: str, *, wildcards: bool = True) -> str:
    """Why ``subject`` does not parse, or "" when it does."""
    return _problem(subject, _SUBJECT_TOKEN, wildcards, "subject")


def key_pattern_problem(pattern: str) -> str:
    """Why a KV key pattern does not parse, or "" when it does."""
    return _problem(pattern, _KEY_TOKEN, True, "KV key pattern")


def _problem(text: str, token_re: re.Pattern[str], wildcards: bool, kind: str) -> str:
    if not isinstance(text, str) or not text:
        return f"{kind} is empty"
    tokens = text.split(".")
    for index, token in enumerate(tokens):
        if token in ("*", ">") and wildcards:
            if token == ">" and index != len(tokens) - 1:
                return f"{kind} {text!r}: '>' must be the last token"
            continue
        if not token:
            return f"{kind} {text!r} has an empty token"
        if not token_re.fullmatch(token):
            return f"{kind} {text!r}: token {token!r} is not allowed"
    return ""


def matches_pattern(key: str, pattern: str) -> bool:
    """Whether a concrete subject or key matches a pattern with ``*`` and ``>``."""
    keys, parts = key.split("."), pattern.split(".")
    for index, part in enumerate(parts):
        if part == ">":
            return len(keys) > index
        if index >= len(keys) or (part != "*" and part != keys[index]):
            return False
    return len(keys) == len(parts)
