"""One step's rules: identifiers, dependencies, retries, skip_if, handlers, flow control, input wiring."""

from __future__ import annotations

from typing import Any

import msgspec

from .capabilities import MAX_CAPABILITIES
from .config_rules import config_issues
from .definition import COMPARISON_OPS, STEP_TYPES, WORKER_STEP_TYPES, RetryPolicy, StepDef
from .durations import HOUR, format_duration
from .issues import Issues, at_most, duration_issues, identifier_issues, path_issues, positive, quote, within
from .paths import is_valid_path
from .resolve import dependencies

MAX_STEP_TIMEOUT = 24 * HOUR
MAX_RETRIES = 100_000
MAX_TASK_CONCURRENCY = 1000
# A rate window keeps every admission of its period, and a slot pool every holder, in one
# KV entry (1 MiB at most): these bounds keep a full window or pool well under it.
MAX_RATE_LIMIT = 5000
RETRY_STRATEGIES = ("fixed", "linear", "exponential")


def step_issues(step: StepDef, steps: dict[str, StepDef], aux: dict[str, bool]) -> Issues:
    yield from identifier_issues("id", step.id)
    if step.type not in STEP_TYPES:
        yield f"type: unknown step type {quote(step.type)} (one of {', '.join(STEP_TYPES)})"
    if step.task:
        yield from identifier_issues("task", step.task)
    elif step.type in WORKER_STEP_TYPES:
        yield f"task: required for a {quote(step.type)} step"
    if step.worker_group:
        yield from identifier_issues("worker_group", step.worker_group)
    yield from _capability_issues(step)
    for field in ("depends_on", "after_any"):
        yield from _dependency_issues(field, step, getattr(step, field), steps, aux)
    if step.type in STEP_TYPES:
        yield from config_issues(step, steps)
    yield from duration_issues("timeout", int(step.timeout), MAX_STEP_TIMEOUT)
    yield from within("retries", step.retries, 0, MAX_RETRIES)
    if step.retry is not None:
        yield from retry_issues("retry", step.retry)
    yield from _skip_if_issues(step)
    for field in ("on_failure", "compensate"):
        yield from _aux_issues(field, step, getattr(step, field), steps)
    yield from _flow_control_issues(step)
    if step.input is not msgspec.UNSET:
        yield from _template_issues("input", step.input, dependencies(step))


def _dependency_issues(
    field: str, step: StepDef, deps: tuple[str, ...], steps: dict[str, StepDef], aux: dict[str, bool]
) -> Issues:
    seen: set[str] = set()
    for dep in deps:
        if dep == step.id:
            yield f"{field}: a step cannot depend on itself"
        elif dep not in steps:
            yield f"{field}: unknown step {quote(dep)}"
        elif dep in aux:  # it may never run, and this step would wait forever
            yield f"{field}: {quote(dep)} is an on_failure/compensate step, which runs only when triggered"
        if dep in seen:
            yield f"{field}: {quote(dep)} is listed more than once"
        seen.add(dep)


def _capability_issues(step: StepDef) -> Issues:
    """Each capability becomes a subject token (with the set's digest), as a group does."""
    caps = step.required_capabilities
    if not caps:
        return
    if step.type in STEP_TYPES and step.type not in WORKER_STEP_TYPES:
        yield f"required_capabilities: a {quote(step.type)} step runs in the engine, not on a worker"
    if len(caps) > MAX_CAPABILITIES:
        yield f"required_capabilities: {len(caps)} capabilities is more than the maximum of {MAX_CAPABILITIES}"
    seen: set[str] = set()
    for index, name in enumerate(caps):
        yield from identifier_issues(f"required_capabilities[{index}]", name)
        if name in seen:
            yield f"required_capabilities: {quote(name)} is listed more than once"
        seen.add(name)


def retry_issues(field: str, policy: RetryPolicy) -> Issues:
    yield from within(f"{field}.max_attempts", policy.max_attempts, 0, MAX_RETRIES)
    if policy.strategy not in RETRY_STRATEGIES:
        yield f"{field}.strategy: must be one of {', '.join(RETRY_STRATEGIES)} (got {quote(policy.strategy)})"
    yield from duration_issues(f"{field}.initial_delay", int(policy.initial_delay))
    yield from duration_issues(f"{field}.max_delay", int(policy.max_delay))
    if policy.multiplier < 0:
        yield f"{field}.multiplier: must not be negative (got {policy.multiplier})"
    if policy.strategy == "exponential" and 0 < int(policy.max_delay) < int(policy.initial_delay):
        yield (
            f"{field}.max_delay: {format_duration(int(policy.max_delay))} is shorter than "
            f"initial_delay {format_duration(int(policy.initial_delay))}"
        )


def _skip_if_issues(step: StepDef) -> Issues:
    cond = step.skip_if
    if cond is None:
        return
    if cond.op not in COMPARISON_OPS:
        yield f"skip_if.op: must be one of {' '.join(COMPARISON_OPS)} (got {quote(cond.op)})"
    if not cond.step_id:
        yield "skip_if.step_id: must not be empty"
    elif cond.step_id not in step.depends_on:
        yield f"skip_if.step_id: {quote(cond.step_id)} is not in depends_on"
    if not cond.field:
        yield "skip_if.field: must not be empty"


def _aux_issues(field: str, step: StepDef, target: str, steps: dict[str, StepDef]) -> Issues:
    if not target:
        return
    if target == step.id:
        yield f"{field}: a step cannot be its own {field} step"
    elif target not in steps:
        yield f"{field}: unknown step {quote(target)}"
    elif steps[target].depends_on or steps[target].after_any:
        yield (f"{field}: target {quote(target)} must not have depends_on or after_any (it runs only when triggered)")


def _flow_control_issues(step: StepDef) -> Issues:
    """Limits hold a worker's task before it is dispatched: a step the engine runs has none."""
    if step.type in STEP_TYPES and step.type not in WORKER_STEP_TYPES:
        limits = {
            "rate_limit": step.rate_limit is not None,
            "keyed_rate_limit": step.keyed_rate_limit is not None,
            "max_task_concurrency": bool(step.max_task_concurrency),
            "singleton": step.singleton,
        }
        for field in (name for name, set_ in limits.items() if set_):
            yield f"{field}: a {quote(step.type)} step runs in the engine, not on a worker: no task to limit"
    if step.rate_limit is not None and step.keyed_rate_limit is not None:
        yield "rate_limit: cannot be combined with keyed_rate_limit"
    if step.rate_limit is not None:
        yield from _rate_rule("rate_limit", step.rate_limit.limit, int(step.rate_limit.period))
    keyed = step.keyed_rate_limit
    if keyed is not None:
        yield from path_issues("keyed_rate_limit.key", keyed.key)
        yield from _rate_rule("keyed_rate_limit", keyed.limit, int(keyed.period))
        yield from within("keyed_rate_limit.units", keyed.units, 1, max(keyed.limit, 1))
    yield from within("max_task_concurrency", step.max_task_concurrency, 0, MAX_TASK_CONCURRENCY)


def _rate_rule(field: str, limit: int, period: int) -> Issues:
    yield from positive(f"{field}.limit", limit)
    yield from at_most(f"{field}.limit", limit, MAX_RATE_LIMIT, "per period")
    yield from positive(f"{field}.period", period)


def _template_issues(where: str, value: Any, deps: tuple[str, ...]) -> Issues:
    """Every {"$ref": "<step>[.path]"} in an input template must name a dependency."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _template_issues(f"{where}[{index}]", item, deps)
    elif isinstance(value, dict) and "$ref" in value:
        yield from _ref_issues(where, value, deps)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _template_issues(f"{where}.{key}", item, deps)


def _ref_issues(where: str, value: dict[str, Any], deps: tuple[str, ...]) -> Issues:
    extra = sorted(set(value) - {"$ref", "default"})
    if extra:
        yield f'{where}: a $ref object takes only "$ref" and "default" (got {", ".join(quote(k) for k in extra)})'
    ref = value["$ref"]
    if not isinstance(ref, str) or not is_valid_path(ref):
        yield f'{where}.$ref: {quote(ref)} is not "<step-id>" or "<step-id>.<dot.path>"'
    elif ref.split(".", 1)[0] not in deps:
        yield f"{where}.$ref: step {quote(ref.split('.', 1)[0])} is not in depends_on or after_any"
