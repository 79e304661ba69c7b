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
