"""Per-type step configs: what each step type's ``config`` must hold beyond its shape."""

from __future__ import annotations

import re
from typing import Any

from .conditions import EVENT_OPS
from .definition import (
    AgentLoopConfig,
    ApprovalConfig,
    MapConfig,
    Match,
    PlannerConfig,
    RespondConfig,
    SleepConfig,
    StepDef,
    SubWorkflowConfig,
    WaitForEventConfig,
    parse_config,
)
from .durations import HOUR
from .issues import Issues, duration_issues, identifier_issues, path_issues, positive, quote, within
from .paths import is_valid_path
from .resolve import dependencies
from .schedules import cron_problem

MAX_SLEEP = 365 * 24 * HOUR
MAX_APPROVAL_TIMEOUT = 168 * HOUR
MAX_MAP_ITEMS = 10_000
# A NATS subject to publish on: tokens without spaces or wildcards, none empty.
_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


def config_issues(step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if step.type in ("normal", "agent"):
        if step.config:
            yield f"config: a {quote(step.type)} step takes no config"
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
    yield from positive("config.max_iterations", config.max_iterations)


def _map(config: MapConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    deps = dependencies(step)
    if len(deps) != 1:
        yield f"depends_on: a map step needs exactly one dependency (has {len(deps)})"
    elif deps[0] in steps and steps[deps[0]].type == "map":
        yield f"depends_on: a map step cannot depend on another map step ({quote(deps[0])}; nesting is not supported)"
    yield from within("config.max_items", config.max_items, 1, MAX_MAP_ITEMS)
    if config.concurrency < 0:
        yield f"config.concurrency: must not be negative (got {config.concurrency})"


def _sub_workflow(config: SubWorkflowConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if not config.workflow:
        yield "config.workflow: required (the name of the workflow to start)"
    else:
        yield from identifier_issues("config.workflow", config.workflow)


def _sleep(config: SleepConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    forms = [f for f in ("duration", "cron", "until_input_path") if getattr(config, f) is not None]
    if len(forms) != 1:
        yield f"config: a sleep needs exactly one of duration, cron, until_input_path (got {len(forms)})"
    if config.duration is not None:
        yield from duration_issues("config.duration", int(config.duration), MAX_SLEEP, required=True)
    if config.cron is not None:
        problem = cron_problem(config.cron)
        if problem:
            yield f"config.cron: {quote(config.cron)}: {problem}"
    if config.until_input_path is not None:
        yield from path_issues("config.until_input_path", config.until_input_path)


def _wait_for_event(config: WaitForEventConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from identifier_issues("config.event", config.event)
    if config.match is None:
        yield 'config.match: required ({"left": ..., "op": "eq", "right": ...})'
    else:
        yield from _event_match("config.match", config.match, steps)
    yield from duration_issues("config.timeout", int(config.timeout), required=True)


def _event_match(field: str, match: Match, steps: dict[str, StepDef]) -> Issues:
    if not match.left:
        yield f"{field}.left: must not be empty"
    if match.op not in EVENT_OPS:
        yield f"{field}.op: must be one of {', '.join(EVENT_OPS)} (got {quote(match.op)})"
    else:
        yield from path_issues(f"{field}.left", match.left)
    right = match.right
    parts = right.split(".")
    if not right:
        yield f"{field}.right: must not be empty"
    elif parts[0] not in ("step", "input") or not is_valid_path(right) or len(parts) < 2:
        yield f'{field}.right: {quote(right)} must be "step.<id>.output[.<path>]" or "input.<path>"'
    elif parts[0] == "step" and (len(parts) < 3 or parts[2] != "output"):
        yield f"{field}.right: {quote(right)} is malformed (expected step.<id>.output[.<path>])"
    elif parts[0] == "step" and parts[1] not in steps:
        yield f"{field}.right: unknown step {quote(parts[1])}"


def _approval(config: ApprovalConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    if not config.subject:
        yield "config.subject: must not be empty"
    elif not _SUBJECT.fullmatch(config.subject):
        yield f"config.subject: {quote(config.subject)} is not a NATS subject (dot-separated tokens, no wildcards)"
    yield from duration_issues("config.timeout", int(config.timeout), MAX_APPROVAL_TIMEOUT, required=True)


def _planner(config: PlannerConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from within("config.max_steps", config.max_steps, 1, 100)
    yield from within("config.max_depth", config.max_depth, 0, 10)
    for index, task in enumerate(config.allowed_tasks):
        yield from identifier_issues(f"config.allowed_tasks[{index}]", task)


def _respond(config: RespondConfig, step: StepDef, steps: dict[str, StepDef]) -> Issues:
    yield from within("config.status", config.status, 100, 599)


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
