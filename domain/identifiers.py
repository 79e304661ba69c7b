"""Identifiers that become NATS subject tokens or KV keys.

A ``*`` or ``>`` in a run id would read or write every run's history, and a
``.`` would split one token into two, so every name that reaches a subject
(workflow names, run ids, step ids, task names, groups, event names) must
match one strict grammar.
"""

from __future__ import annotations

import re

from .errors import InvalidIdentifier

IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and IDENTIFIER_RE.fullmatch(value) is not None


def check_identifier(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe identifier, else raise InvalidIdentifier."""
    if not is_identifier(value):
        raise InvalidIdentifier(kind, str(value))
    return value  # type: ignore[return-value]
