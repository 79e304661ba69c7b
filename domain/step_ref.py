"""StepRef: a handle on one step of a WorkflowBuilder, and ``ref`` for input templates.

Every modifier returns the same StepRef so calls chain; a StepRef from
another builder, or pointing at its own step, raises BuilderError at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from .definition import COMPARISON_OPS, RetryPolicy
from .errors import BuilderError
from .paths import is_valid_path

if TYPE_CHECKING:
    from .builder import WorkflowBuilder

__all__ = ["StepRef", "ref"]


class StepRef:
    """A handle on one step of one builder: its methods change that step and return the handle."""

    __slots__ = ("_builder", "id")

    def __init__(self, builder: WorkflowBuilder, step_id: str) -> None:
        self._builder, self.id = builder, step_id

    def __repr__(self) -> str:
        return f"StepRef({self.id!r}, workflow={self._builder.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepRef) and other._builder is self._builder and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self._builder), self.id))

    # ---- wiring ----------------------------------------------------------------------------

    def after(self, *refs: StepRef) -> StepRef:
        """Start only when every one of ``refs`` completed, was skipped by skip_if, or recovered
        (depends_on)."""
        return self._extend("depends_on", refs)

    def after_any(self, *refs: StepRef) -> StepRef:
        """Also wait for ``refs``, which may have failed or been skipped (after_any)."""
        return self._extend("after_any", refs)

    def on_failure(self, target: StepRef) -> StepRef:
        """Run ``target`` (with the error as input) when this step fails for good."""
        return self._set("on_failure", self._other(target, "be its own on_failure step"))

    def compensate(self, target: StepRef) -> StepRef:
        """Run ``target`` to undo this step when a later step fails for good (saga)."""
        return self._set("compensate", self._other(target, "be its own compensate step"))

    def skip_if(self, parent: StepRef, field: str, op: str, value: Any = None) -> StepRef:
        """Skip this step when ``parent``'s output ``field`` compares true with ``value``."""
        parent_id = self._other(parent, "skip on its own output")
        if parent_id not in self._step.get("depends_on", []):
            raise self._fail(
                f"skip_if parent {parent_id!r} is not a dependency of {self.id!r}; call .after({parent_id}) first"
            )
        if op not in COMPARISON_OPS:
            raise self._fail(f"skip_if op must be one of {' '.join(COMPARISON_OPS)} (got {op!r})")
        if not isinstance(field, str) or not field:
            raise self._fail(f"skip_if field must be a non-empty string (got {field!r})")
        value = self._builder._json(f"step {self.id!r}: skip_if value", value)
        return self._set("skip_if", {"step_id": parent_id, "field": field, "op": op, "value": value})

    def with_input(self, template: Any) -> StepRef:
        """Explicit input: a JSON template whose ``ref(...)`` objects (or StepRefs) are filled with outputs."""
        return self._set("input", self._builder._json(f"step {self.id!r}: input", template))

    def output(self, path: str | None = None, default: Any = msgspec.UNSET) -> dict[str, Any]:
        """``ref(self, path, default)``: this step's output (at ``path``) in an input template."""
        return ref(self, path, default)

    # ---- attempts ----------------------------------------------------------------------------

    def with_retries(self, n: int) -> StepRef:
        """Retry up to ``n`` times, 5 seconds apart (the legacy ``retries`` field).

        Applies only when the step has no ``retry`` and the workflow no ``default_retry``;
        for another delay use ``with_retry``.
        """
        return self._set("retries", self._builder._count(f"step {self.id!r}: retries", n))

    def with_retry(self, policy: RetryPolicy | Mapping[str, Any] | None = None, **fields: Any) -> StepRef:
        """A retry policy: a RetryPolicy, a dict, or its fields as keywords."""
        return self._set("retry", self._builder._policy(f"step {self.id!r}: retry", policy, fields))

    def with_timeout(self, duration: Any) -> StepRef:
        """Limit on each attempt of this step."""
        return self._set("timeout", self._builder._ns(f"step {self.id!r}: timeout", duration))

    def optional(self) -> StepRef:
        """A failure of this step does not fail the run."""
        return self._set("optional", True)

    # ---- placement and flow control ----------------------------------------------------------

    def with_worker_group(self, group: str) -> StepRef:
        return self._set("worker_group", self._builder._identifier("worker group", group))

    def with_capabilities(self, *names: str) -> StepRef:
        """Only workers offering every one of ``names`` take the step (``required_capabilities``)."""
        added = [self._builder._text("capability", n) for n in names]
        current = self._step.get("required_capabilities", [])
        return self._set("required_capabilities", current + [n for n in dict.fromkeys(added) if n not in current])

    def with_rate_limit(self, limit: int, period: Any) -> StepRef:
        """At most ``limit`` tasks of this step's type dispatched in any ``period``, across all
        runs and engines (``rate_limit``)."""
        where = f"step {self.id!r}: rate_limit"
        return self._set(
            "rate_limit",
            {
                "limit": self._builder._count(f"{where}.limit", limit, 1),
                "period": self._builder._ns(f"{where}.period", period),
            },
        )

    def with_keyed_rate_limit(self, key: str, limit: int, period: Any, units: int = 1) -> StepRef:
        """Like with_rate_limit, one window per value at ``key`` of the step input; a task takes
        ``units`` (``keyed_rate_limit``)."""
        b, where = self._builder, f"step {self.id!r}: keyed_rate_limit"
        return self._set(
            "keyed_rate_limit",
            {
                "key": b._path(f"{where}.key", key),
                "limit": b._count(f"{where}.limit", limit, 1),
                "period": b._ns(f"{where}.period", period),
                "units": b._count(f"{where}.units", units, 1),
            },
        )

    def with_task_concurrency(self, n: int) -> StepRef:
        """At most ``n`` tasks of this step's type in flight at once, across all runs and engines
        (``max_task_concurrency``)."""
        return self._set("max_task_concurrency", self._builder._count(self._at("max_task_concurrency"), n, 1))

    def singleton(self) -> StepRef:
        """At most one attempt of this step in flight across all runs of the workflow; the others
        wait their turn (the step's ``singleton``)."""
        return self._set("singleton", True)

    def with_metadata(self, metadata: Mapping[str, str]) -> StepRef:
        """String pairs stored on the step (merged with earlier ones); the handler reads them
        as ``ctx.metadata``."""
        added = self._builder._strings(f"step {self.id!r}: metadata", metadata)
        return self._set("metadata", {**self._step.get("metadata", {}), **added})

    # ---- type-specific ---------------------------------------------------------------------------

    def with_max_items(self, n: int) -> StepRef:
        """Bound on the items a map step fans out over (the step fails on a longer array)."""
        return self._config("with_max_items", "map", max_items=self._builder._count(self._at("max_items"), n, 1))

    def with_map_concurrency(self, n: int) -> StepRef:
        """At most ``n`` items of a map step in flight at once (0: all of them)."""
        n = self._builder._count(self._at("concurrency"), n)
        return self._config("with_map_concurrency", "map", concurrency=n)

    def with_max_iterations(self, n: int) -> StepRef:
        """Bound on the iterations of an agent_loop step (the step fails past it)."""
        n = self._builder._count(self._at("max_iterations"), n, 1)
        return self._config("with_max_iterations", "agent_loop", max_iterations=n)

    def with_max_duration(self, duration: Any) -> StepRef:
        """Wall-clock bound on an agent_loop step, from its first iteration (the step fails past it)."""
        duration = self._builder._ns(self._at("max_duration"), duration)
        return self._config("with_max_duration", "agent_loop", max_duration=duration)

    def with_loop_delay(self, duration: Any) -> StepRef:
        """Pause between the iterations of an agent_loop step (a durable timer)."""
        duration = self._builder._ns(self._at("loop_delay"), duration)
        return self._config("with_loop_delay", "agent_loop", loop_delay=duration)

    def with_detach(self) -> StepRef:
        """The sub-workflow step completes at once, with the child's run id; the child runs on its own."""
        return self._config("with_detach", "sub_workflow", detach=True)

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def _step(self) -> dict[str, Any]:
        return self._builder._steps[self.id]

    def _set(self, field: str, value: Any) -> StepRef:
        self._step[field] = value
        return self

    def _at(self, field: str) -> str:
        return f"step {self.id!r}: {field}"

    def _fail(self, reason: str) -> BuilderError:
        return self._builder._error(f"step {self.id!r}: {reason}", self.id)

    def _other(self, target: Any, relation: str) -> str:
        target_id = _owned(self._builder, target, f"step {self.id!r}")
        if target_id == self.id:
            raise self._builder._error(f"step {self.id!r} cannot {relation}", self.id)
        return target_id

    def _extend(self, field: str, refs: tuple[Any, ...]) -> StepRef:
        ids = [self._other(r, "come after itself") for r in refs]
        current = self._step.setdefault(field, [])
        current.extend(i for i in dict.fromkeys(ids) if i not in current)
        return self

    def _config(self, method: str, step_type: str, **values: Any) -> StepRef:
        actual = self._step.get("type", "normal")
        if actual != step_type:
            raise self._fail(f"{method} applies to {step_type} steps, but {self.id!r} is a {actual} step")
        self._step["config"].update(values)
        return self


def ref(step: StepRef | str, path: str | None = None, default: Any = msgspec.UNSET) -> dict[str, Any]:
    """An input-template reference: ``{"$ref": "id[.path]"}``, plus ``"default"`` when given."""
    step_id = step.id if isinstance(step, StepRef) else step
    target = step_id if path is None else f"{step_id}.{path}"
    if not isinstance(target, str) or not is_valid_path(target):
        workflow = step._builder.name if isinstance(step, StepRef) else ""
        raise BuilderError(workflow, f'ref: {target!r} is not "<step-id>" or "<step-id>.<dot.path>"')
    out: dict[str, Any] = {"$ref": target}
    if default is not msgspec.UNSET:
        out["default"] = default
    return out


def _owned(builder: WorkflowBuilder, target: Any, where: str) -> str:
    """``target``'s step id, if it is a StepRef of ``builder``."""
    if not isinstance(target, StepRef):
        raise builder._error(f"{where}: expected a StepRef returned by the builder, got {target!r}")
    if target._builder is not builder:
        other = target._builder.name
        owner = (
            f"another builder of workflow {other!r}"
            if other == builder.name
            else f"workflow {other!r}, not {builder.name!r}"
        )
        raise builder._error(f"step {target.id!r} belongs to {owner}", target.id)
    return target.id
