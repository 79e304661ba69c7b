"""Errors of reactive workflows: each carries the ids it is about."""

from __future__ import annotations

from ..errors import DagnatsError


class ReactiveWorkflowInvalid(DagnatsError, ValueError):
    """A reactive definition failed validation; ``issues`` lists every problem found."""

    def __init__(self, workflow: str, issues: list[str]) -> None:
        self.workflow, self.issues = workflow, list(issues)
        super().__init__(f"invalid reactive workflow {workflow!r}: " + "; ".join(self.issues))


class ReactiveWorkflowExists(DagnatsError, ValueError):
    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        super().__init__(f"reactive workflow {workflow!r} is already registered")


class ResultTypeExists(DagnatsError, ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"result type {name!r} is already registered")
