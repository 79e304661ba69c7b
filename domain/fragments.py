"""Steps added to a run while it runs: a planner's plan, and a handler's add_step.

Pure checks shared by the fold (which adds only steps that fit) and decide
(which fails whatever added steps that do not).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .definition import PlannerConfig, StepDef, WorkflowDef
from .identifiers import is_identifier
from .resolve import dependencies

MAX_DYNAMIC_STEPS = 500
# Workers learn which capability sets exist from the registered definitions: a set that
# only a step added at run time requires would have no worker consuming its subject.
NO_ADDED_CAPABILITIES = "required_capabilities are only for steps of a registered workflow, not added ones"


def plan(
    defn: WorkflowDef, planner: StepDef, config: PlannerConfig, output: Any, added: int
) -> tuple[tuple[StepDef, ...], str]:
    """The fragment a planner's output asks for, namespaced, or why it is refused."""
    if not isinstance(output, dict) or not isinstance(output.get("steps"), list):
        return (), 'a planner must return {"steps": [...]}'
    try:
        steps = msgspec.convert(output["steps"], list[StepDef])
    except msgspec.ValidationError as err:
        return (), f"steps: {err}"
    problem = plan_problems(steps, config, added)
    if problem:
        return (), problem
    prefix = f"{planner.id}-"
    named = tuple(
        msgspec.structs.replace(
            s,
            id=prefix + s.id,
            type="normal",
            depends_on=tuple(prefix + dep for dep in s.depends_on),
            after_any=tuple(prefix + dep for dep in s.after_any),
            on_failure="",
            compensate="",
        )
        for s in steps
    )
    taken = [s.id for s in named if s.id in defn.step_map() or not is_identifier(s.id)]
    if taken:
        return (), f"step id {taken[0]!r} is taken or too long"
    return named, ""


def plan_problems(steps: list[StepDef], config: PlannerConfig, added: int) -> str:
    """The first thing wrong with a planner's fragment, or ""."""
    if not steps:
        return ""
    if len(steps) > config.max_steps:
        return f"{len(steps)} steps, more than max_steps {config.max_steps}"
    if added + len(steps) > MAX_DYNAMIC_STEPS:
        return f"a run may add at most {MAX_DYNAMIC_STEPS} steps"
    ids = [s.id for s in steps]
    for step in steps:
        if not is_identifier(step.id):
            return f"step id {step.id!r} is not an identifier"
        if not is_identifier(step.task):
            return f"step {step.id!r}: task {step.task!r} is not an identifier"
        if config.allowed_tasks and step.task not in config.allowed_tasks:
            return f"step {step.id!r}: task {step.task!r} is not in allowed_tasks"
        if step.required_capabilities:
            return f"step {step.id!r}: {NO_ADDED_CAPABILITIES}"
        outside = [dep for dep in dependencies(step) if dep not in ids]
        if outside:
            return f"step {step.id!r} depends on {outside[0]!r}, which is not in the plan"
    if len(set(ids)) != len(ids):
        return f"duplicate step id {next(i for i in ids if ids.count(i) > 1)!r}"
    depth = chain_depth(steps)
    if depth is None:
        return "the plan has a cycle"
    if config.max_depth and depth > config.max_depth:
        return f"a chain of {depth} steps, deeper than max_depth {config.max_depth}"
    return ""


def chain_depth(steps: list[StepDef]) -> int | None:
    """The longest chain of dependencies (1 for lone steps), or None on a cycle (Kahn)."""
    deps = {s.id: set(dependencies(s)) for s in steps}
    depth = {sid: 1 for sid in deps}
    ready = [sid for sid, d in deps.items() if not d]
    done = 0
    while ready:
        sid = ready.pop()
        done += 1
        for other, d in deps.items():
            if sid in d:
                d.discard(sid)
                depth[other] = max(depth[other], depth[sid] + 1)
                if not d:
                    ready.append(other)
    return max(depth.values()) if done == len(deps) else None


def added_problem(defn: WorkflowDef, current: str, steps: tuple[StepDef, ...], already_added: int) -> str:
    """What is wrong with steps a handler of step ``current`` adds to ``defn``, or ""
    (a step already there, the same, is fine: a retried attempt adds it again)."""
    known = defn.step_map()
    new = [s for s in steps if s.id not in known]
    if already_added + len(new) > MAX_DYNAMIC_STEPS:
        return f"a run may add at most {MAX_DYNAMIC_STEPS} steps"
    for step in steps:
        if not is_identifier(step.id) or not is_identifier(step.task):
            return f"step {step.id!r} (task {step.task!r}): ids and task names must be identifiers"
        if current not in step.depends_on:
            return f"step {step.id!r} must depend on {current!r}, the step that adds it"
        if step.required_capabilities and step.id not in known:
            return f"step {step.id!r}: {NO_ADDED_CAPABILITIES}"
        if step.id in known and known[step.id] != step:
            return f"step id {step.id!r} is taken"
    ids = {s.id for s in steps} | set(known)
    for step in steps:
        missing = [dep for dep in dependencies(step) if dep not in ids]
        if missing:
            return f"step {step.id!r} depends on unknown step {missing[0]!r}"
    return ""
