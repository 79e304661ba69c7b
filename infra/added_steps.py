"""Steps a handler adds to its run while it runs (``ctx.add_step``).

Each call is checked at once, where the handler can see the error: ids and
task names are identifiers, ids are unique within the attempt, the input
encodes as JSON. The steps are only collected here; the TaskRunner reports
them as one ``steps.added`` fact before the attempt's result, and only if the
handler succeeded, so a failed attempt adds nothing and a retried one adds
the same steps again (the engine takes them once). The engine checks the
rest against the run: ids not taken, dependencies that exist.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import UNSET

from dagnats.domain.definition import StepDef
from dagnats.domain.errors import DagnatsError
from dagnats.domain.events import Fragment
from dagnats.domain.identifiers import check_identifier


class InvalidAddedStep(DagnatsError, ValueError):
    """``ctx.add_step`` was called with a step the attempt cannot add."""

    def __init__(self, step_id: str, reason: str) -> None:
        self.step_id, self.reason = step_id, reason
        super().__init__(f"cannot add step {step_id!r}: {reason}")


class AddedSteps:
    """The steps one attempt of step ``current`` adds, in the order added."""

    def __init__(self, current: str) -> None:
        self.current = current
        self._steps: dict[str, StepDef] = {}
        self._lock = threading.Lock()  # a sync handler may add from several threads

    def add(self, step_id: str, task: str, input: Any = UNSET, after: Iterable[str] = ()) -> str:
        """Check and collect one step that runs after ``current`` and ``after``; returns its id."""
        check_identifier("step id", step_id)
        check_identifier("task name", task)
        if isinstance(after, str):  # after="a" would otherwise read as ["a"]'s letters
            after = [after]
        deps = tuple(dict.fromkeys([self.current, *(check_identifier("step id", d) for d in after)]))
        if step_id in deps:
            raise InvalidAddedStep(step_id, "a step cannot depend on itself")
        if input is not UNSET:
            try:
                input = msgspec.to_builtins(input)
            except (TypeError, ValueError, OverflowError) as err:
                raise InvalidAddedStep(step_id, f"input does not encode as JSON: {err}") from None
        step = StepDef(id=step_id, task=task, depends_on=deps, input=input)
        with self._lock:
            if step_id in self._steps:
                raise InvalidAddedStep(step_id, "this attempt already added a step with that id")
            self._steps[step_id] = step
        return step_id

    def fragment(self) -> Fragment | None:
        """The steps added, as the payload of ``steps.added``; None if there are none."""
        with self._lock:
            return Fragment(steps=tuple(self._steps.values())) if self._steps else None
