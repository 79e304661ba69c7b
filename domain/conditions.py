"""skip_if: compare a top-level field of a parent's JSON output.

Numbers compare as numbers, strings as strings (all six operators), booleans
only with == and !=. Anything else (missing field, non-object output, mixed
types) is "not skipped".
"""

from __future__ import annotations

import operator
from typing import Any

from . import state as st
from .definition import ParentCond

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(cond: ParentCond, run: st.WorkflowRun) -> bool:
    output = run.step(cond.step_id).output
    if not isinstance(output, dict) or cond.field not in output or cond.op not in _OPS:
        return False
    left, right = output[cond.field], cond.value
    if _is_number(left) and _is_number(right):
        return bool(_OPS[cond.op](float(left), float(right)))
    if isinstance(left, str) and isinstance(right, str):
        return bool(_OPS[cond.op](left, right))
    if isinstance(left, bool) and isinstance(right, bool) and cond.op in ("==", "!="):
        return bool(_OPS[cond.op](left, right))
    return False


# wait_for_event: the match operators, by name.
EVENT_OPS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def compare(op: str, left: Any, right: Any) -> bool:
    """``left <op> right`` for a wait_for_event match (``op`` one of EVENT_OPS, or a
    skip_if symbol). Numbers compare as numbers and strings as strings; ``eq`` and
    ``ne`` compare anything else by its JSON text, so 42 matches "42"."""
    symbol = EVENT_OPS.get(op, op)
    if symbol not in _OPS:
        return False
    if _is_number(left) and _is_number(right):
        return bool(_OPS[symbol](float(left), float(right)))
    if isinstance(left, str) and isinstance(right, str):
        return bool(_OPS[symbol](left, right))
    if symbol in ("==", "!="):
        return bool(_OPS[symbol](value_text(left), value_text(right)))
    return False


def value_text(value: Any) -> str:
    """A JSON value as text, the same for equal values (keys sorted): an index key."""
    if isinstance(value, str):
        return value
    import json  # a stdlib parser, no I/O: only for values that are not strings

    return json.dumps(value, sort_keys=True, separators=(",", ":"))
