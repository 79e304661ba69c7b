"""validate(wf): every structural rule of a workflow definition, all at once.

Parsing (``definition.py``) guarantees shapes and types; this module checks
what spans fields and steps: identifiers that become subject tokens, the
dependency graph (Kahn's algorithm), per-type configs, bounds. Every problem
is collected, so a user fixes a definition in one round, and each issue says
where it is: ``step "b": depends_on: unknown step "x"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

from .capabilities import MAX_CAPABILITIES
from .conditions import EVENT_OPS
from .definition import (
    COMPARISON_OPS,
    STEP_TYPES,
    WORKER_STEP_TYPES,
    AgentLoopConfig,
    ApprovalConfig,
    MapConfig,
    Match,
    PlannerConfig,
    RespondConfig,
    RetryPolicy,
    SleepConfig,
    StepDef,
    SubWorkflowConfig,
    WaitForEventConfig,
    WorkflowDef,
    decode_workflow_strictly,
    parse_config,
)
from .durations import HOUR, format_duration
from .errors import WorkflowInvalid
from .identifiers import is_identifier
from .paths import is_valid_path
from .resolve import dependencies
from .schedules import cron_problem
from .values import json_problem

MAX_STEPS = 1000
MAX_STEP_TIMEOUT = 24 * HOUR
MAX_RETRIES = 100_000
MAX_SLEEP = 365 * 24 * HOUR
MAX_WORKFLOW_TIMEOUT = MAX_SLEEP  # a run may wait as long as its longest sleep, no longer
MAX_APPROVAL_TIMEOUT = 168 * HOUR
MAX_MAP_ITEMS = 10_000
MAX_TASK_CONCURRENCY = 1000
# A rate window keeps every admission of its period, and a slot pool every holder, in one
# KV entry (1 MiB at most): these bounds keep a full window or pool well under it.
MAX_RATE_LIMIT = 5000
MAX_RUNS = 10_000
MAX_PRIORITY_RULES = 20
MAX_PRIORITY_OFFSET = 600
MAX_CANCEL_ON = 5
MAX_STEP_ERROR_BYTES = 1 << 20
RETRY_STRATEGIES = ("fixed", "linear", "exponential")
IDENTIFIER_RULE = "must match ^[A-Za-z0-9_-]{1,64}$ (letters, digits, '_' and '-'; no '.', '*', '>' or spaces)"
# A NATS subject to publish on: tokens without spaces or wildcards, none empty.
_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")

Issues = Iterator[str]


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
        issues += [f"{_step_label(step, index)}: {issue}" for issue in _step_issues(step, steps, aux)]
    issues += _cycle_issues(steps)
    return issues


def _value_issues(wf: WorkflowDef) -> Issues:
    """Free-form JSON values (schemas, inputs, configs): at most MAX_DEPTH deep, no NaN."""
    for field in ("input_schema", "output_schema"):
        yield from _json_value(field, getattr(wf, field))
    for index, step in enumerate(wf.steps):
        label = _step_label(step, index)
        yield from _json_value(f"{label}: input", step.input)
        yield from _json_value(f"{label}: config", step.config)
        if step.skip_if is not None:
            yield from _json_value(f"{label}: skip_if.value", step.skip_if.value)


# ---- helpers ---------------------------------------------------------------------------


def _q(value: Any) -> str:
    """A value quoted as JSON, so hostile strings print unambiguously."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _step_label(step: StepDef, index: int) -> str:
    return f"step {_q(step.id)}" if step.id else f"steps[{index}]"


def _json_value(field: str, value: Any) -> Issues:
    problem = json_problem(value)
    if problem:
        yield f"{field}: {problem}"


def _identifier(field: str, value: Any) -> Issues:
    if not is_identifier(value):
        yield f"{field}: {_q(value)} {IDENTIFIER_RULE}"


def _path(field: str, value: Any) -> Issues:
    if not isinstance(value, str) or not is_valid_path(value):
        yield f'{field}: {_q(value)} is not a dot path such as "data.user.id"'


def _within(field: str, value: Any, low: int | float, high: int | float) -> Issues:
    if not low <= value <= high:
        yield f"{field}: must be between {low} and {high} (got {_q(value)})"


def _positive(field: str, value: Any) -> Issues:
    if not value > 0:
        yield f"{field}: must be greater than 0 (got {_q(value)})"


def _at_most(field: str, value: int, maximum: int, what: str) -> Issues:
    if value > maximum:
        yield f"{field}: {value} is more than the maximum of {maximum} {what}"


def _duration(field: str, value: int, maximum: int | None = None, required: bool = False) -> Issues:
    if value < 0 or (required and value == 0):
        yield f"{field}: must be greater than 0" if required else f"{field}: must not be negative"
    elif maximum is not None and value > maximum:
        yield f"{field}: {format_duration(value)} is longer than the maximum of {format_duration(maximum)}"


# ---- the workflow ------------------------------------------------------------------------


def _workflow_issues(wf: WorkflowDef) -> Issues:
    yield from _identifier("name", wf.name)
    if not wf.steps:
        yield "steps: a workflow needs at least one step"
    elif len(wf.steps) > MAX_STEPS:
        yield f"steps: {len(wf.steps)} steps is more than the maximum of {MAX_STEPS}"
    yield from _duplicate_ids(wf)
    if wf.concurrency is not None:
        if wf.concurrency.max_runs < 0:
            yield f"concurrency.max_runs: must not be negative (got {wf.concurrency.max_runs})"
        yield from _at_most("concurrency.max_runs", wf.concurrency.max_runs, MAX_RUNS, "runs at once")
        yield from _within("concurrency.max_steps", wf.concurrency.max_steps, 0, MAX_STEPS)
    yield from _duration("timeout", int(wf.timeout), MAX_WORKFLOW_TIMEOUT)
    if wf.default_retry is not None:
        yield from _retry_issues("default_retry", wf.default_retry)
    if wf.idempotency_key:
        yield from _path("idempotency_key", wf.idempotency_key)
    yield from _sticky_issues(wf)
    yield from _priority_issues(wf)
    yield from _cancel_on_issues(wf)
    if wf.singleton is not None:
        if wf.singleton.mode not in ("skip", "cancel"):
            yield f'singleton.mode: must be "skip" or "cancel" (got {_q(wf.singleton.mode)})'
        if wf.singleton.key:
            yield from _path("singleton.key", wf.singleton.key)
    yield from _within("max_step_error_bytes", wf.max_step_error_bytes, 1, MAX_STEP_ERROR_BYTES)
    yield from _schema_issues("input_schema", wf.input_schema)
    yield from _schema_issues("output_schema", wf.output_schema)


def _duplicate_ids(wf: WorkflowDef) -> Issues:
    seen: set[str] = set()
    reported: set[str] = set()
    for step in wf.steps:
        if step.id in seen and step.id not in reported:
            reported.add(step.id)
            yield f"steps: duplicate step id {_q(step.id)}"
        seen.add(step.id)


def _sticky_issues(wf: WorkflowDef) -> Issues:
    if wf.sticky not in ("", "soft", "hard"):
        yield f'sticky: must be "soft" or "hard" (got {_q(wf.sticky)})'
    elif wf.sticky == "hard" and not wf.timeout:
        yield 'sticky: "hard" needs a workflow timeout, or a run could wait forever for its worker'
    if wf.sticky:
        grouped = [step.id for step in wf.steps if step.worker_group]
        if grouped:
            names = ", ".join(_q(s) for s in grouped)
            yield f"sticky: cannot be combined with a step worker_group (set on {names})"
        # The run's worker may not offer them: a hard-sticky run would wait for it forever.
        capable = [step.id for step in wf.steps if step.required_capabilities]
        if capable:
            names = ", ".join(_q(s) for s in capable)
            yield f"sticky: cannot be combined with step required_capabilities (set on {names})"


def _priority_issues(wf: WorkflowDef) -> Issues:
    priority = wf.priority
    if priority is None:
        return
    yield from _path("priority.key", priority.key)
    if not 1 <= len(priority.rules) <= MAX_PRIORITY_RULES:
        yield f"priority.rules: needs 1 to {MAX_PRIORITY_RULES} rules (got {len(priority.rules)})"
    for value, offset in priority.rules.items():
        yield from _within(f"priority.rules[{_q(value)}]", offset, -MAX_PRIORITY_OFFSET, MAX_PRIORITY_OFFSET)
    yield from _within("priority.default_offset", priority.default_offset, -MAX_PRIORITY_OFFSET, MAX_PRIORITY_OFFSET)


def _cancel_on_issues(wf: WorkflowDef) -> Issues:
    if len(wf.cancel_on) > MAX_CANCEL_ON:
        yield f"cancel_on: {len(wf.cancel_on)} entries is more than the maximum of {MAX_CANCEL_ON}"
    for index, cancel in enumerate(wf.cancel_on):
        field = f"cancel_on[{index}]"
        yield from _identifier(f"{field}.event", cancel.event)
        if cancel.match is not None:
            if not cancel.match.left:
                yield f"{field}.match.left: must not be empty"
            if cancel.match.op != "eq":
                yield f'{field}.match.op: must be "eq" (got {_q(cancel.match.op)})'
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


# ---- one step ---------------------------------------------------------------------------


def _step_issues(step: StepDef, steps: dict[str, StepDef], aux: dict[str, bool]) -> Issues:
    yield from _identifier("id", step.id)
    if step.type not in STEP_TYPES:
        yield f"type: unknown step type {_q(step.type)} (one of {', '.join(STEP_TYPES)})"
    if step.task:
        yield from _identifier("task", step.task)
    elif step.type in WORKER_STEP_TYPES:
        yield f"task: required for a {_q(step.type)} step"
    if step.worker_group:
        yield from _identifier("worker_group", step.worker_group)
    yield from _capability_issues(step)
    for field in ("depends_on", "after_any"):
        yield from _dependency_issues(field, step, getattr(step, field), steps, aux)
    if step.type in STEP_TYPES:
        yield from _config_issues(step, steps)
    yield from _duration("timeout", int(step.timeout), MAX_STEP_TIMEOUT)
    yield from _within("retries", step.retries, 0, MAX_RETRIES)
    if step.retry is not None:
        yield from _retry_issues("retry", step.retry)
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
            yield f"{field}: unknown step {_q(dep)}"
        elif dep in aux:  # it may never run, and this step would wait forever
            yield f"{field}: {_q(dep)} is an on_failure/compensate step, which runs only when triggered"
        if dep in seen:
            yield f"{field}: {_q(dep)} is listed more than once"
        seen.add(dep)


def _capability_issues(step: StepDef) -> Issues:
    """Each capability becomes a subject token (with the set's digest), as a group does."""
    caps = step.required_capabilities
    if not caps:
        return
    if step.type in STEP_TYPES and step.type not in WORKER_STEP_TYPES:
        yield f"required_capabilities: a {_q(step.type)} step runs in the engine, not on a worker"
    if len(caps) > MAX_CAPABILITIES:
        yield f"required_capabilities: {len(caps)} capabilities is more than the maximum of {MAX_CAPABILITIES}"
    seen: set[str] = set()
    for index, name in enumerate(caps):
        yield from _identifier(f"required_capabilities[{index}]", name)
        if name in seen:
            yield f"required_capabilities: {_q(name)} is listed more than once"
        seen.add(name)


def _retry_issues(field: str, policy: RetryPolicy) -> Issues:
    yield from _within(f"{field}.max_attempts", policy.max_attempts, 0, MAX_RETRIES)
    if policy.strategy not in RETRY_STRATEGIES:
        yield f"{field}.strategy: must be one of {', '.join(RETRY_STRATEGIES)} (got {_q(policy.strategy)})"
    yield from _duration(f"{field}.initial_delay", int(policy.initial_delay))
    yield from _duration(f"{field}.max_delay", int(policy.max_delay))
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
        yield f"skip_if.op: must be one of {' '.join(COMPARISON_OPS)} (got {_q(cond.op)})"
    if not cond.step_id:
        yield "skip_if.step_id: must not be empty"
    elif cond.step_id not in step.depends_on:
        yield f"skip_if.step_id: {_q(cond.step_id)} is not in depends_on"
    if not cond.field:
        yield "skip_if.field: must not be empty"


def _aux_issues(field: str, step: StepDef, target: str, steps: dict[str, StepDef]) -> Issues:
    if not target:
        return
    if target == step.id:
        yield f"{field}: a step cannot be its own {field} step"
    elif target not in steps:
        yield f"{field}: unknown step {_q(target)}"
    elif steps[target].depends_on or steps[target].after_any:
        yield (f"{field}: target {_q(target)} must not have depends_on or after_any (it runs only when triggered)")


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
            yield f"{field}: a {_q(step.type)} step runs in the engine, not on a worker: no task to limit"
    if step.rate_limit is not None and step.keyed_rate_limit is not None:
        yield "rate_limit: cannot be combined with keyed_rate_limit"
    if step.rate_limit is not None:
        yield from _rate_rule("rate_limit", step.rate_limit.limit, int(step.rate_limit.period))
    keyed = step.keyed_rate_limit
    if keyed is not None:
        yield from _path("keyed_rate_limit.key", keyed.key)
        yield from _rate_rule("keyed_rate_limit", keyed.limit, int(keyed.period))
        yield from _within("keyed_rate_limit.units", keyed.units, 1, max(keyed.limit, 1))
    yield from _within("max_task_concurrency", step.max_task_concurrency, 0, MAX_TASK_CONCURRENCY)


def _rate_rule(field: str, limit: int, period: int) -> Issues:
    yield from _positive(f"{field}.limit", limit)
    yield from _at_most(f"{field}.limit", limit, MAX_RATE_LIMIT, "per period")
    yield from _positive(f"{field}.period", period)


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
        yield f'{where}: a $ref object takes only "$ref" and "default" (got {", ".join(_q(k) for k in extra)})'
    ref = value["$ref"]
    if not isinstance(ref, str) or not is_valid_path(ref):
        yield f'{where}.$ref: {_q(ref)} is not "<step-id>" or "<step-id>.<dot.path>"'
    elif ref.split(".", 1)[0] not in deps:
        yield f"{where}.$ref: step {_q(ref.split('.', 1)[0])} is not in depends_on or after_any"


# ---- per-type configs ----------------------------------------------------------------------


def _config_issues(step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if step.type in ("normal", "agent"):
        if step.config:
            yield f"config: a {_q(step.type)} step takes no config"
        return
    try:
        config = parse_config(step.type, step.config)
    except ValueError as err:
        yield f"config: {str(err).replace('Object contains unknown field', 'unknown field')}"
        return
    check = _CONFIG_RULES.get(step.type)
    if check is not None:
        yield from check(config, step, steps)


def _agent_loop(config: AgentLoopConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from _positive("config.max_iterations", config.max_iterations)


def _map(config: MapConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    deps = dependencies(step)
    if len(deps) != 1:
        yield f"depends_on: a map step needs exactly one dependency (has {len(deps)})"
    elif deps[0] in steps and steps[deps[0]].type == "map":
        yield f"depends_on: a map step cannot depend on another map step ({_q(deps[0])}; nesting is not supported)"
    yield from _within("config.max_items", config.max_items, 1, MAX_MAP_ITEMS)
    if config.concurrency < 0:
        yield f"config.concurrency: must not be negative (got {config.concurrency})"


def _sub_workflow(config: SubWorkflowConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if not config.workflow:
        yield "config.workflow: required (the name of the workflow to start)"
    else:
        yield from _identifier("config.workflow", config.workflow)


def _sleep(config: SleepConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    forms = [f for f in ("duration", "cron", "until_input_path") if getattr(config, f) is not None]
    if len(forms) != 1:
        yield f"config: a sleep needs exactly one of duration, cron, until_input_path (got {len(forms)})"
    if config.duration is not None:
        yield from _duration("config.duration", int(config.duration), MAX_SLEEP, required=True)
    if config.cron is not None:
        problem = cron_problem(config.cron)
        if problem:
            yield f"config.cron: {_q(config.cron)}: {problem}"
    if config.until_input_path is not None:
        yield from _path("config.until_input_path", config.until_input_path)


def _wait_for_event(config: WaitForEventConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from _identifier("config.event", config.event)
    if config.match is None:
        yield 'config.match: required ({"left": ..., "op": "eq", "right": ...})'
    else:
        yield from _event_match("config.match", config.match, steps)
    yield from _duration("config.timeout", int(config.timeout), required=True)


def _event_match(field: str, match: Match, steps: dict[str, StepDef]) -> Issues:
    if not match.left:
        yield f"{field}.left: must not be empty"
    if match.op not in EVENT_OPS:
        yield f"{field}.op: must be one of {', '.join(EVENT_OPS)} (got {_q(match.op)})"
    else:
        yield from _path(f"{field}.left", match.left)
    right = match.right
    parts = right.split(".")
    if not right:
        yield f"{field}.right: must not be empty"
    elif parts[0] not in ("step", "input") or not is_valid_path(right) or len(parts) < 2:
        yield f'{field}.right: {_q(right)} must be "step.<id>.output[.<path>]" or "input.<path>"'
    elif parts[0] == "step" and (len(parts) < 3 or parts[2] != "output"):
        yield f"{field}.right: {_q(right)} is malformed (expected step.<id>.output[.<path>])"
    elif parts[0] == "step" and parts[1] not in steps:
        yield f"{field}.right: unknown step {_q(parts[1])}"


def _approval(config: ApprovalConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if not config.subject:
        yield "config.subject: must not be empty"
    elif not _SUBJECT.fullmatch(config.subject):
        yield f"config.subject: {_q(config.subject)} is not a NATS subject (dot-separated tokens, no wildcards)"
    yield from _duration("config.timeout", int(config.timeout), MAX_APPROVAL_TIMEOUT, required=True)


def _planner(config: PlannerConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from _within("config.max_steps", config.max_steps, 1, 100)
    yield from _within("config.max_depth", config.max_depth, 0, 10)
    for index, task in enumerate(config.allowed_tasks):
        yield from _identifier(f"config.allowed_tasks[{index}]", task)


def _respond(config: RespondConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from _within("config.status", config.status, 100, 599)


_CONFIG_RULES: dict[str, Any] = {
    "agent_loop": _agent_loop,
    "map": _map,
    "sub_workflow": _sub_workflow,
    "sleep": _sleep,
    "wait_for_event": _wait_for_event,
    "approval": _approval,
    "planner": _planner,
    "respond": _respond,
}


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
        stuck = ", ".join(_q(sid) for sid, deps in waiting.items() if deps)
        yield f"steps: cycle among steps {stuck} ({reached} of {len(steps)} steps are reachable)"
