"""The registry of reactive workflows: validates every definition, collecting all problems."""

from __future__ import annotations

import builtins
from typing import Any

from ..identifiers import is_identifier
from .errors import ReactiveWorkflowExists, ReactiveWorkflowInvalid, ResultTypeExists
from .patterns import key_pattern_problem, subject_problem
from .rules import ActionType, Rule, is_state_type
from .workflow import ReactiveWorkflow


class ReactiveRegistry:
    def __init__(self) -> None:
        self._workflows: dict[str, ReactiveWorkflow] = {}
        self._result_types: dict[str, type] = {}

    def register_result_type(self, name: str, result_type: type) -> None:
        if name in self._result_types and self._result_types[name] is not result_type:
            raise ResultTypeExists(name)
        self._result_types[name] = result_type

    def result_type(self, ref: Any) -> type | None:
        """A publish_async result type: a registered name, or a type given directly."""
        if isinstance(ref, type):
            return ref
        return self._result_types.get(ref) if isinstance(ref, str) else None

    def register(self, workflow: ReactiveWorkflow) -> ReactiveWorkflow:
        issues = self.problems(workflow)
        if issues:
            raise ReactiveWorkflowInvalid(str(workflow.id), issues)
        if workflow.id in self._workflows:
            raise ReactiveWorkflowExists(workflow.id)
        self._workflows[workflow.id] = workflow
        return workflow

    def get(self, workflow_id: str) -> ReactiveWorkflow | None:
        return self._workflows.get(workflow_id)

    def all(self) -> builtins.list[ReactiveWorkflow]:
        return list(self._workflows.values())

    def list(self) -> builtins.list[str]:
        return sorted(self._workflows)

    def problems(self, wf: ReactiveWorkflow) -> builtins.list[str]:
        """Every problem of a definition, each naming its rule and field."""
        issues: list[str] = []
        if not is_identifier(wf.id):
            issues.append(f"workflow id {wf.id!r} must match ^[A-Za-z0-9_-]{{1,64}}$")
        if not is_state_type(wf.state_type):
            issues.append("state type missing: pass state_type=, a msgspec Struct subclassing ExecutionState")
        if not is_identifier(wf.state_bucket):
            issues.append(f"state_bucket {wf.state_bucket!r} must be a bucket name (^[A-Za-z0-9_-]{{1,64}}$)")
        if not isinstance(wf.max_iterations, int) or wf.max_iterations < 0:
            issues.append(f"max_iterations must be a whole number >= 0, not {wf.max_iterations!r}")
        try:
            wf.timeout_ns  # noqa: B018 - parsed for its error
        except ValueError as err:
            issues.append(f"timeout: {err}")
        for name in ("on_complete", "on_fail", "on_escalate"):
            subject = getattr(wf, name)
            if subject and (problem := subject_problem(subject, wildcards=False)):
                issues.append(f"{name}: {problem}")
        if not wf.rules:
            issues.append("no rules: add at least one with add_rule")
        seen: set[str] = set()
        for rule in wf.rules:
            if rule.id in seen:
                issues.append(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
            issues += [f"rule {rule.id!r}: {p}" for p in self._rule_problems(rule)]
            lookup = rule.trigger.state_bucket
            if rule.trigger.state_key is not None and lookup != wf.state_bucket:
                issues.append(
                    f"rule {rule.id!r}: with_state_lookup bucket {lookup!r} is not the workflow's state_bucket "
                    f"{wf.state_bucket!r} (an execution's state lives in its workflow's state bucket)"
                )
        return issues

    def _rule_problems(self, rule: Rule) -> builtins.list[str]:
        issues = list(rule.problems)
        if not is_identifier(rule.id):
            issues.append("rule id must match ^[A-Za-z0-9_-]{1,64}$")
        trigger = rule.trigger
        if trigger.mode is None:
            issues.append("no trigger: use watch_kv, on_subject or on_jetstream_subject")
        if trigger.watch_bucket:
            if not is_identifier(trigger.watch_bucket):
                issues.append(f"watch_kv bucket {trigger.watch_bucket!r} is not a bucket name")
            if problem := key_pattern_problem(trigger.watch_pattern):
                issues.append(f"watch_kv: {problem}")
        if trigger.subject and (problem := subject_problem(trigger.subject)):
            issues.append(f"trigger: {problem}")
        if trigger.stream and not is_identifier(trigger.stream):
            issues.append(f"stream {trigger.stream!r} is not a stream name")
        if trigger.state_key is not None and not trigger.subject:
            issues.append("with_state_lookup needs a subject trigger (on_subject or on_jetstream_subject)")
        issues += self._action_problems(rule)
        return issues

    def _action_problems(self, rule: Rule) -> builtins.list[str]:
        action = rule.action
        if action is None:
            return ["no action: use publish, publish_async, mutate or complete"]
        issues = []
        if action.type in (ActionType.PUBLISH, ActionType.PUBLISH_ASYNC) or action.subject:
            if problem := subject_problem(action.subject, wildcards=False):
                issues.append(f"{action.type} subject: {problem}")
            if action.build is None:
                issues.append(f"{action.type} needs a payload builder")
        if action.type == ActionType.PUBLISH_ASYNC and self.result_type(action.result_type) is None:
            issues.append(
                f"result type {action.result_type!r} is not registered (register_result_type(name, type) first)"
            )
        if action.type == ActionType.MUTATE and action.mutate is None:
            issues.append("mutate needs a function")
        return issues
