"""The phrases validation rules share: each yields issues (strings naming the field).

Rules elsewhere (``validate.py``, ``step_rules.py``, ``config_rules.py``,
``triggers.py``) compose these, so a bound reads the same wherever it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from .durations import format_duration
from .identifiers import is_identifier
from .paths import is_valid_path
from .values import json_problem

Issues = Iterator[str]
IDENTIFIER_RULE = "must match ^[A-Za-z0-9_-]{1,64}$ (letters, digits, '_' and '-'; no '.', '*', '>' or spaces)"


def quote(value: Any) -> str:
    """A value quoted as JSON, so hostile strings print unambiguously."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def step_label(step: Any, index: int) -> str:
    return f"step {quote(step.id)}" if step.id else f"steps[{index}]"


def json_value_issues(field: str, value: Any) -> Issues:
    problem = json_problem(value)
    if problem:
        yield f"{field}: {problem}"


def identifier_issues(field: str, value: Any) -> Issues:
    if not is_identifier(value):
        yield f"{field}: {quote(value)} {IDENTIFIER_RULE}"


def path_issues(field: str, value: Any) -> Issues:
    if not isinstance(value, str) or not is_valid_path(value):
        yield f'{field}: {quote(value)} is not a dot path such as "data.user.id"'


def within(field: str, value: Any, low: int | float, high: int | float) -> Issues:
    if not low <= value <= high:
        yield f"{field}: must be between {low} and {high} (got {quote(value)})"


def positive(field: str, value: Any) -> Issues:
    if not value > 0:
        yield f"{field}: must be greater than 0 (got {quote(value)})"


def at_most(field: str, value: int, maximum: int, what: str) -> Issues:
    if value > maximum:
        yield f"{field}: {value} is more than the maximum of {maximum} {what}"


def duration_issues(field: str, value: int, maximum: int | None = None, required: bool = False) -> Issues:
    if value < 0 or (required and value == 0):
        yield f"{field}: must be greater than 0" if required else f"{field}: must not be negative"
    elif maximum is not None and value > maximum:
        yield f"{field}: {format_duration(value)} is longer than the maximum of {format_duration(maximum)}"
