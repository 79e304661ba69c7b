"""Explicit input wiring: JSON templates with ``{"$ref": "step[.dot.path]"}``.

A ``$ref`` object is replaced by that upstream's output (or the part at the
dot-path). ``{"$ref": ..., "default": v}`` uses ``v`` when the upstream
failed or was skipped; without a default such an upstream skips the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import state as st
from .paths import PathNotFound, extract_dot_path

REF = "$ref"
DEFAULT = "default"


class SkipStep(Exception):
    """An upstream a required ``$ref`` names did not complete."""


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REF), str)


def refs(template: Any) -> Iterator[dict[str, Any]]:
    """Every ``$ref`` object in the template, depth first."""
    if is_ref(template):
        yield template
    elif isinstance(template, dict):
        for value in template.values():
            yield from refs(value)
    elif isinstance(template, list):
        for value in template:
            yield from refs(value)


def split_ref(ref: str) -> tuple[str, str]:
    step_id, _, path = ref.partition(".")
    return step_id, path


def resolve(template: Any, run: st.WorkflowRun) -> Any:
    """The template with every ``$ref`` replaced; raises SkipStep."""
    if is_ref(template):
        return _resolve_ref(template, run)
    if isinstance(template, dict):
        return {k: resolve(v, run) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, run) for v in template]
    return template


def _resolve_ref(obj: dict[str, Any], run: st.WorkflowRun) -> Any:
    step_id, path = split_ref(obj[REF])
    state = run.step(step_id)
    if state.status != st.StepStatus.COMPLETED:
        if DEFAULT in obj:
            return obj[DEFAULT]
        raise SkipStep(f"upstream {step_id} {state.status}")
    if not path:
        return state.output
    try:
        return extract_dot_path(state.output, path)
    except PathNotFound:
        if DEFAULT in obj:
            return obj[DEFAULT]
        return None


def defaulted_steps(template: Any) -> set[str]:
    """Upstreams every reference to which carries a default."""
    with_default: set[str] = set()
    without: set[str] = set()
    for obj in refs(template):
        step_id, _ = split_ref(obj[REF])
        (with_default if DEFAULT in obj else without).add(step_id)
    return with_default - without
