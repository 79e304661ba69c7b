"""validate(wf): every structural rule of a workflow definition, all at once.

Parsing (``definition.py``) guarantees shapes and types; this module checks
what spans fields and steps: identifiers that become subject tokens, the
dependency graph (Kahn's algorithm), bounds, the triggers a definition
declares. Every problem is collected, so a user fixes a definition in one
round, and each issue says where it is: ``step "b": depends_on: unknown step "x"``.
The rules of one step live in ``step_rules.py``, of a step type's config in
``config_rules.py``, of a trigger in ``triggers.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .config_rules import MAX_SLEEP
from .definition import StepDef, WorkflowDef, decode_workflow_strictly
from .errors import WorkflowInvalid
from .issues import (
    Issues,
    at_most,
    duration_issues,
    identifier_issues,
    json_value_issues,
    path_issues,
    quote,
    step_label,
    within,
)
from .resolve import dependencies
from .step_rules import retry_issues, step_issues
from .triggers import declared_trigger_issues

MAX_STEPS = 1000
MAX_WORKFLOW_TIMEOUT = MAX_SLEEP  # a run may wait as long as its longest sleep, no longer
MAX_RUNS = 10_000
MAX_PRIORITY_RULES = 20
MAX_PRIORITY_OFFSET = 600
MAX_CANCEL_ON = 5
MAX_STEP_ERROR_BYTES = 1 << 20


def validate(wf: WorkflowDef) -> WorkflowDef:
    """Raise WorkflowInvalid listing every problem, else return ``wf`` with ``aux_steps`` set."""
    issues = find_issues(wf)
    if issues:
        raise WorkflowInvalid(str(wf.name), issues)
    return msgspec.structs.replace(wf, aux_steps=aux_targets(wf))


def parse_and_validate(data: bytes | str, source: str = "workflow") -> WorkflowDef:
    """Decode a JSON definition a user wrote and validate it (DefinitionDecodeError or
    WorkflowInvalid); a key given twice or nesting too deep is refused, naming where."""
    return validate(decode_workflow_strictly(data, source))


def aux_targets(wf: WorkflowDef) -> dict[str, bool]:
    """Steps named by some ``on_failure`` or ``compensate``: they run only when triggered."""
    return {target: True for step in wf.steps for target in (step.on_failure, step.compensate) if target}


def find_issues(wf: WorkflowDef) -> list[str]:
    """Every problem with ``wf``, each naming the field (and step) it is about."""
    issues = list(_value_issues(wf))
    if issues:  # the rules below walk these values recursively: stop before they do
        return issues
    steps: dict[str, StepDef] = {}
    for step in wf.steps:
        steps.setdefault(step.id, step)
    aux = aux_targets(wf)
    issues = list(_workflow_issues(wf))
    for index, step in enumerate(wf.steps):
        issues += [f"{step_label(step, index)}: {issue}" for issue in step_issues(step, steps, aux)]
    issues += _cycle_issues(steps)
    issues += declared_trigger_issues(wf.name, wf.triggers)
    return issues


def _value_issues(wf: WorkflowDef) -> Issues:
    """Free-form JSON values (schemas, inputs, configs): at most MAX_DEPTH deep, no NaN."""
    for field in ("input_schema", "output_schema"):
        yield from json_value_issues(field, getattr(wf, field))
    for index, step in enumerate(wf.steps):
        label = step_label(step, index)
        yield from json_value_issues(f"{label}: input", step.input)
        yield from json_value_issues(f"{label}: config", step.config)
        if step.skip_if is not None:
            yield from json_value_issues(f"{label}: skip_if.value", step.skip_if.value)


# ---- the workflow ------------------------------------------------------------------------


def _workflow_issues(wf: WorkflowDef) -> Issues:
    yield from identifier_issues("name", wf.name)
    if not wf.steps:
        yield "steps: a workflow needs at least one step"
    elif len(wf.steps) > MAX_STEPS:
        yield f"steps: {len(wf.steps)} steps is more than the maximum of {MAX_STEPS}"
    yield from _duplicate_ids(wf)
    if wf.concurrency is not None:
        if wf.concurrency.max_runs < 0:
            yield f"concurrency.max_runs: must not be negative (got {wf.concurrency.max_runs})"
        yield from at_most("concurrency.max_runs", wf.concurrency.max_runs, MAX_RUNS, "runs at once")
        yield from within("concurrency.max_steps", wf.concurrency.max_steps, 0, MAX_STEPS)
    yield from duration_issues("timeout", int(wf.timeout), MAX_WORKFLOW_TIMEOUT)
    if wf.default_retry is not None:
        yield from retry_issues("default_retry", wf.default_retry)
    if wf.idempotency_key:
        yield from path_issues("idempotency_key", wf.idempotency_key)
    yield from _sticky_issues(wf)
    yield from _priority_issues(wf)
    yield from _cancel_on_issues(wf)
    if wf.singleton is not None:
        if wf.singleton.mode not in ("skip", "cancel"):
            yield f'singleton.mode: must be "skip" or "cancel" (got {quote(wf.singleton.mode)})'
        if wf.singleton.key:
            yield from path_issues("singleton.key", wf.singleton.key)
    yield from within("max_step_error_bytes", wf.max_step_error_bytes, 1, MAX_STEP_ERROR_BYTES)
    yield from _schema_issues("input_schema", wf.input_schema)
    yield from _schema_issues("output_schema", wf.output_schema)


def _duplicate_ids(wf: WorkflowDef) -> Issues:
    seen: set[str] = set()
    reported: set[str] = set()
    for step in wf.steps:
        if step.id in seen and step.id not in reported:
            reported.add(step.id)
            yield f"steps: duplicate step id {quote(step.id)}"
        seen.add(step.id)


def _sticky_issues(wf: WorkflowDef) -> Issues:
    if wf.sticky not in ("", "soft", "hard"):
        yield f'sticky: must be "soft" or "hard" (got {quote(wf.sticky)})'
    elif wf.sticky == "hard" and not wf.timeout:
        yield 'sticky: "hard" needs a workflow timeout, or a run could wait forever for its worker'
    if wf.sticky:
        grouped = [step.id for step in wf.steps if step.worker_group]
        if grouped:
            names = ", ".join(quote(s) for s in grouped)
            yield f"sticky: cannot be combined with a step worker_group (set on {names})"
        # The run's worker may not offer them: a hard-sticky run would wait for it forever.
        capable = [step.id for step in wf.steps if step.required_capabilities]
        if capable:
            names = ", ".join(quote(s) for s in capable)
            yield f"sticky: cannot be combined with step required_capabilities (set on {names})"


def _priority_issues(wf: WorkflowDef) -> Issues:
    priority = wf.priority
    if priority is None:
        return
    yield from path_issues("priority.key", priority.key)
    if not 1 <= len(priority.rules) <= MAX_PRIORITY_RULES:
        yield f"priority.rules: needs 1 to {MAX_PRIORITY_RULES} rules (got {len(priority.rules)})"
    for value, offset in priority.rules.items():
        yield from within(f"priority.rules[{quote(value)}]", offset, -MAX_PRIORITY_OFFSET, MAX_PRIORITY_OFFSET)
    yield from within("priority.default_offset", priority.default_offset, -MAX_PRIORITY_OFFSET, MAX_PRIORITY_OFFSET)


def _cancel_on_issues(wf: WorkflowDef) -> Issues:
    if len(wf.cancel_on) > MAX_CANCEL_ON:
        yield f"cancel_on: {len(wf.cancel_on)} entries is more than the maximum of {MAX_CANCEL_ON}"
    for index, cancel in enumerate(wf.cancel_on):
        field = f"cancel_on[{index}]"
        yield from identifier_issues(f"{field}.event", cancel.event)
        if cancel.match is not None:
            if not cancel.match.left:
                yield f"{field}.match.left: must not be empty"
            if cancel.match.op != "eq":
                yield f'{field}.match.op: must be "eq" (got {quote(cancel.match.op)})'
            if not cancel.match.right:
                yield f"{field}.match.right: must not be empty"


def _schema_issues(field: str, schema: Any) -> Issues:
    if schema is None:
        return
    import jsonschema  # on first use: it costs ~50 ms to import, and most definitions have no schema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as err:
        where = "/".join(str(part) for part in err.path)
        yield f"{field}: not a valid JSON Schema: {err.message}" + (f" (at {where})" if where else "")


# ---- the graph ---------------------------------------------------------------------------------


def _cycle_issues(steps: dict[str, StepDef]) -> Issues:
    """Kahn's algorithm over depends_on + after_any; what is never freed sits on or behind a cycle."""
    waiting = {sid: {d for d in dependencies(s) if d in steps and d != sid} for sid, s in steps.items()}
    dependents: dict[str, list[str]] = {sid: [] for sid in steps}
    for sid, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(sid)
    free = [sid for sid, deps in waiting.items() if not deps]
    reached = 0
    while free:
        sid = free.pop()
        reached += 1
        for child in dependents[sid]:
            waiting[child].discard(sid)
            if not waiting[child]:
                free.append(child)
    if reached < len(steps):
        stuck = ", ".join(quote(sid) for sid, deps in waiting.items() if deps)
        yield f"steps: cycle among steps {stuck} ({reached} of {len(steps)} steps are reachable)"
