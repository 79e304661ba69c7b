"""WorkflowBuilder: define a workflow in Python and get the WorkflowDef JSON would give.

Theory of operation: the builder writes the JSON document a user would have
written by hand — one dict per step with the same field names, durations as
integer nanoseconds, configs and templates as plain JSON values — and
``build()`` decodes that document with ``workflow_from_object`` and runs
``validate()``, exactly as registration of a JSON file does. The two paths
therefore cannot drift: same decoding, same rules, same ``aux_steps``.

Mistakes the builder can see at the call (a StepRef from another builder, a
self-reference, a duplicate or malformed id, a bad duration, a skip_if on a
step that is not a dependency) raise ``BuilderError`` there, where the
traceback points at the culprit. Rules over the whole graph (cycles, map
dependencies, per-type bounds) stay with ``validate()`` and surface from
``build()`` as ``WorkflowInvalid``.

Builder durations are seconds (int or float), ``timedelta`` or Go-style
strings ("30s"); a ``RetryPolicy`` object is taken as already parsed.

The builder writes every step type and setting the language has, and the
engine runs and enforces all of them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import jsonschema
import msgspec

from .conditions import EVENT_OPS
from .definition import Match, RetryPolicy, WorkflowDef, encode_workflow, workflow_from_object
from .durations import MICROSECOND, SECOND, parse_duration
from .errors import BuilderError, InvalidDuration, InvalidIdentifier
from .identifiers import check_identifier
from .paths import is_valid_path
from .schema_gen import schema_for
from .step_ref import StepRef, _owned, ref
from .validate import parse_and_validate, validate

__all__ = ["WorkflowBuilder", "StepRef", "ref", "duration_ns"]

_MAX_NS = 2**63 - 1


class WorkflowBuilder:
    """Accumulates a workflow's steps and settings; ``build()`` returns the validated WorkflowDef."""

    def __init__(self, name: str, version: str = "1") -> None:
        self._doc: dict[str, Any] = {"name": name, "version": version}
        self._steps: dict[str, dict[str, Any]] = {}
        self._identifier("workflow name", name)

    @property
    def name(self) -> str:
        return str(self._doc["name"])

    def __repr__(self) -> str:
        return f"WorkflowBuilder({self.name!r}, {len(self._steps)} steps)"

    # ---- workflow settings ---------------------------------------------------------------

    def version(self, version: str) -> WorkflowBuilder:
        return self._set("version", self._text("version", version))

    def description(self, text: str) -> WorkflowBuilder:
        return self._set("description", self._text("description", text))

    def with_timeout(self, duration: Any) -> WorkflowBuilder:
        """Wall-clock limit of a whole run."""
        return self._set("timeout", self._ns("timeout", duration))

    def with_default_retry(
        self, policy: RetryPolicy | Mapping[str, Any] | None = None, **fields: Any
    ) -> WorkflowBuilder:
        """Retry policy of every step without its own ``retry``; it takes precedence over ``retries``."""
        return self._set("default_retry", self._policy("default_retry", policy, fields))

    def with_idempotency_key(self, dot_path: str) -> WorkflowBuilder:
        return self._set("idempotency_key", self._path("idempotency_key", dot_path))

    def with_singleton(self, mode: str, key: str = "") -> WorkflowBuilder:
        if mode not in ("skip", "cancel"):
            raise self._error(f'singleton mode must be "skip" or "cancel" (got {mode!r})')
        config = {"mode": mode, "key": self._path("singleton key", key)} if key else {"mode": mode}
        return self._set("singleton", config)

    def cancel_on(
        self, event: str, left: str | None = None, op: str = "eq", right: str | None = None, timeout: Any = None
    ) -> WorkflowBuilder:
        """Cancel the run when ``event`` arrives (and ``left`` of the event equals ``right``;
        ``op`` is "eq", the only operator cancel_on takes)."""
        entry: dict[str, Any] = {"event": self._identifier("cancel_on event", event)}
        if (left is None) != (right is None):
            raise self._error(f"cancel_on {event!r}: give both left and right, or neither")
        if left is not None:
            match = Match(left=left, op=op, right=str(right))
            entry["match"] = self._match(f"cancel_on {event!r}", match, ops=("eq",))
        if timeout is not None:
            entry["timeout"] = self._ns(f"cancel_on {event!r}: timeout", timeout)
        self._doc.setdefault("cancel_on", []).append(entry)
        return self

    def with_concurrency(self, max_runs: int = 0, max_steps: int = 0) -> WorkflowBuilder:
        """Runs of this workflow at once (the rest wait ``pending``), steps under way at once in a run."""
        return self._set(
            "concurrency",
            {
                "max_runs": self._count("concurrency.max_runs", max_runs),
                "max_steps": self._count("concurrency.max_steps", max_steps),
            },
        )

    def with_priority(self, key: str, rules: Mapping[str, int], default_offset: int = 0) -> WorkflowBuilder:
        """Order the runs ``max_runs`` keeps waiting by the value at ``key`` of their input: a run
        moves ``rules[value]`` seconds ahead in the queue (negative: behind)."""
        rules = dict(rules)
        offsets = [*rules.values(), default_offset]
        if not all(isinstance(k, str) for k in rules) or any(type(o) is not int for o in offsets):
            raise self._error(
                f"priority: rules must map strings to integer offsets, "
                f"and default_offset be an integer (got {rules!r}, {default_offset!r})"
            )
        return self._set(
            "priority", {"key": self._path("priority key", key), "rules": rules, "default_offset": default_offset}
        )

    def with_sticky(self, strategy: str) -> WorkflowBuilder:
        if strategy not in ("soft", "hard"):
            raise self._error(f'sticky must be "soft" or "hard" (got {strategy!r})')
        return self._set("sticky", strategy)

    def with_max_step_error_bytes(self, limit: int) -> WorkflowBuilder:
        return self._set("max_step_error_bytes", self._count("max_step_error_bytes", limit, 1))

    def with_schemas(self, input_type: Any = None, output_type: Any = None) -> WorkflowBuilder:
        """Input and output JSON Schemas generated from types (Structs, dataclasses, TypedDicts, ...)."""
        for field, tp in (("input_schema", input_type), ("output_schema", output_type)):
            if tp is not None:
                try:
                    schema = schema_for(tp)
                except (TypeError, ValueError) as err:
                    raise self._error(f"{field}: cannot describe {tp!r} as JSON Schema: {err}") from None
                self._set(field, self._schema(field, schema))
        return self

    def with_input_schema(self, schema: Mapping[str, Any]) -> WorkflowBuilder:
        return self._set("input_schema", self._schema("input_schema", schema))

    def with_output_schema(self, schema: Mapping[str, Any]) -> WorkflowBuilder:
        return self._set("output_schema", self._schema("output_schema", schema))

    # ---- steps ------------------------------------------------------------------------------

    def task(self, step_id: str, task: str) -> StepRef:
        """A normal step: one task run by a worker."""
        return self._add(step_id, "normal", task)

    def sleep(
        self, step_id: str, duration: Any = None, *, cron: str | None = None, until_input_path: str | None = None
    ) -> StepRef:
        """A durable pause, run by the engine without a worker: for ``duration``, until the
        next time of a 5-field ``cron`` expression (UTC), or until the time (RFC 3339 or
        epoch milliseconds) at ``until_input_path`` in the run input. Completes with null.
        """
        config: dict[str, Any] = {}
        if duration is not None:
            config["duration"] = self._ns(f"step {step_id!r}: sleep duration", duration)
        if cron is not None:
            config["cron"] = self._text("cron", cron)
        if until_input_path is not None:
            config["until_input_path"] = self._path("until_input_path", until_input_path)
        if len(config) != 1:
            raise self._error(f"step {step_id!r}: a sleep needs exactly one of duration, cron, until_input_path")
        return self._add(step_id, "sleep", config=config)

    def wait_for_event(
        self, step_id: str, event: str, match: Match | Mapping[str, str] | None = None, *, timeout: Any
    ) -> StepRef:
        """Wait for an ``event`` (``dagnats event publish``) whose ``match.left`` (a path in
        the event's data) compares true, by ``match.op`` (eq ne lt lte gt gte), with
        ``match.right`` ("input.<path>" or "step.<id>.output[.<path>]", resolved when
        the wait begins). Completes with the event's data, or with ``{"timeout": true}``
        once ``timeout`` has passed.
        """
        config: dict[str, Any] = {"event": self._identifier("event", event)}
        if match is not None:
            config["match"] = self._match(f"step {step_id!r}", match, ops=tuple(EVENT_OPS))
        config["timeout"] = self._ns(f"step {step_id!r}: timeout", timeout)
        return self._add(step_id, "wait_for_event", config=config)

    def approval(
        self, step_id: str, subject: str, timeout: Any, description: str = "", metadata: Mapping[str, str] | None = None
    ) -> StepRef:
        """A human gate: the request goes to the NATS ``subject``; ``dagnats run approve``
        completes the step with the decision, ``run reject`` fails it, and no decision
        within ``timeout`` (at most 168h) fails it with "approval timed out".
        """
        config: dict[str, Any] = {
            "subject": self._text("subject", subject),
            "timeout": self._ns(f"step {step_id!r}: timeout", timeout),
        }
        if description:
            config["description"] = self._text("description", description)
        if metadata is not None:
            config["metadata"] = self._strings(f"step {step_id!r}: metadata", metadata)
        return self._add(step_id, "approval", config=config)

    def sub_workflow(self, step_id: str, workflow: str, detach: bool = False) -> StepRef:
        """Start a child run of ``workflow`` with this step's input; the step ends as the
        child ends, with its output. ``detach``: complete at once with the child's run id.
        """
        config: dict[str, Any] = {"workflow": self._identifier("sub-workflow name", workflow)}
        if detach:
            config["detach"] = True
        return self._add(step_id, "sub_workflow", config=config)

    def map(self, step_id: str, task: str, max_items: int = 1000, concurrency: int = 0) -> StepRef:
        """Run ``task`` once per item of the array its one dependency returned (at most
        ``max_items``), at most ``concurrency`` at once (0: all); the output is the array
        of the items' outputs, in order. Each item is retried on its own.
        """
        config = {"max_items": self._count(f"step {step_id!r}: max_items", max_items, 1)}
        if concurrency:
            config["concurrency"] = self._count(f"step {step_id!r}: concurrency", concurrency)
        return self._add(step_id, "map", task, config=config)

    def agent_loop(
        self,
        step_id: str,
        task: str,
        max_iterations: int | None = None,
        max_duration: Any = None,
        loop_delay: Any = None,
        budget_warn_at: int = 0,
        budget_force_at: int = 0,
    ) -> StepRef:
        """Run ``task`` once per iteration while its handler returns ``Continue(data)``
        (``data`` is the next iteration's input), after ``loop_delay`` each time; past
        ``max_iterations`` or ``max_duration`` the step fails. The budget fields are
        advisory, for workers.
        """
        where, config = f"step {step_id!r}", {}
        if max_iterations is not None:
            config["max_iterations"] = self._count(f"{where}: max_iterations", max_iterations, 1)
        for field, value in (("max_duration", max_duration), ("loop_delay", loop_delay)):
            if value is not None:
                config[field] = self._ns(f"{where}: {field}", value)
        for field, value in (("budget_warn_at", budget_warn_at), ("budget_force_at", budget_force_at)):
            if value:
                config[field] = self._count(f"{where}: {field}", value)
        return self._add(step_id, "agent_loop", task, config=config)

    def agent(self, step_id: str, task: str, metadata: Mapping[str, str] | None = None) -> StepRef:
        """An agent step, run like a normal step; ``metadata`` (role, ...) reaches the
        handler as ``ctx.metadata``."""
        if metadata is not None:
            metadata = self._strings(f"step {step_id!r}: metadata", metadata)
        return self._add(step_id, "agent", task, metadata=metadata)

    def planner(
        self,
        step_id: str,
        task: str,
        max_steps: int,
        max_depth: int = 0,
        allowed_tasks: tuple[str, ...] | list[str] = (),
    ) -> StepRef:
        """A step whose handler returns a plan, ``{"steps": [...]}``: at most ``max_steps``
        steps, chains at most ``max_depth`` deep (0: no limit), tasks in ``allowed_tasks``
        (empty: any). The engine adds them to the run as ``<step_id>-<id>``; this step's
        dependents run after them.
        """
        config: dict[str, Any] = {"max_steps": self._count(f"step {step_id!r}: max_steps", max_steps, 1)}
        if max_depth:
            config["max_depth"] = self._count(f"step {step_id!r}: max_depth", max_depth)
        if allowed_tasks:
            config["allowed_tasks"] = [self._identifier("allowed task", t) for t in allowed_tasks]
        return self._add(step_id, "planner", task, config=config)

    # ---- output -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document this builder describes (not yet validated)."""
        return copy.deepcopy({**self._doc, "steps": list(self._steps.values())})

    def build(self) -> WorkflowDef:
        """Decode and validate the document: WorkflowInvalid lists every structural problem."""
        return validate(workflow_from_object(self.to_dict(), source=f"workflow {self.name!r}"))

    def to_json(self) -> bytes:
        """The validated definition as JSON, ready for ``dagnats workflow register``."""
        return encode_workflow(self.build())

    @staticmethod
    def from_json(data: bytes | str) -> WorkflowDef:
        """Decode and validate a JSON definition, as registration does."""
        return parse_and_validate(data)

    # ---- helpers ------------------------------------------------------------------------------

    def _add(
        self,
        step_id: str,
        step_type: str,
        task: str = "",
        config: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> StepRef:
        self._identifier("step id", step_id)
        if step_id in self._steps:
            raise self._error(f"step {step_id!r} is already defined in workflow {self.name!r}", step_id)
        step: dict[str, Any] = {"id": step_id}
        if task:
            step["task"] = self._identifier("task", task)
        if step_type != "normal":
            step["type"] = step_type
        if config is not None:
            step["config"] = config
        if metadata is not None:
            step["metadata"] = metadata
        self._steps[step_id] = step
        return StepRef(self, step_id)

    def _set(self, field: str, value: Any) -> WorkflowBuilder:
        self._doc[field] = value
        return self

    def _error(self, reason: str, step_id: str = "") -> BuilderError:
        return BuilderError(self._doc["name"], reason, step_id)

    def _identifier(self, kind: str, value: Any) -> str:
        try:
            return check_identifier(kind, value)
        except InvalidIdentifier as err:
            raise self._error(str(err)) from None

    def _text(self, field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self._error(f"{field} must be a string (got {value!r})")
        return value

    def _path(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not is_valid_path(value):
            raise self._error(f'{field}: {value!r} is not a dot path such as "data.user.id"')
        return value

    def _count(self, field: str, value: Any, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._error(f"{field} must be an integer >= {minimum} (got {value!r})")
        return value

    def _ns(self, field: str, value: Any) -> int:
        try:
            return duration_ns(value)
        except InvalidDuration:
            raise self._error(
                f"{field}: invalid duration {value!r}: expected a non-negative number of "
                'seconds, a timedelta or a Go-style string such as "30s"'
            ) from None

    def _json(self, field: str, value: Any) -> Any:
        """``value`` as the JSON path would hold it (lists, not tuples); StepRefs become $refs."""
        try:
            return msgspec.json.decode(msgspec.json.encode(value, enc_hook=self._ref_hook))
        except (TypeError, msgspec.EncodeError) as err:
            raise self._error(f"{field}: not a JSON value: {err}") from None

    def _ref_hook(self, value: Any) -> Any:
        if isinstance(value, StepRef):
            return ref(_owned(self, value, "input template"))
        raise TypeError(f"{type(value).__name__} {value!r} is not JSON")

    def _strings(self, field: str, mapping: Mapping[str, str]) -> dict[str, str]:
        if not isinstance(mapping, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise self._error(f"{field} must map strings to strings (got {mapping!r})")
        return dict(mapping)

    def _match(self, where: str, match: Match | Mapping[str, str], ops: tuple[str, ...]) -> dict[str, str]:
        try:
            parsed = match if isinstance(match, Match) else msgspec.convert(match, Match)
        except msgspec.ValidationError as err:
            raise self._error(f"{where}: match: {err}") from None
        if parsed.op not in ops:
            allowed = '"eq"' if ops == ("eq",) else f"one of {', '.join(ops)}"
            raise self._error(f"{where}: match op must be {allowed} (got {parsed.op!r})")
        built: dict[str, str] = msgspec.to_builtins(parsed)
        return built

    def _policy(self, field: str, policy: Any, fields: dict[str, Any]) -> dict[str, Any]:
        if isinstance(policy, RetryPolicy):
            data = msgspec.to_builtins(policy)  # durations already in nanoseconds
        elif policy is None or isinstance(policy, Mapping):
            data = {
                k: self._ns(f"{field}.{k}", v) if k in ("initial_delay", "max_delay") else v
                for k, v in dict(policy or {}).items()
            }
        else:
            raise self._error(f"{field} must be a RetryPolicy or a dict (got {policy!r})")
        for key, value in fields.items():
            data[key] = self._ns(f"{field}.{key}", value) if key in ("initial_delay", "max_delay") else value
        try:
            converted: dict[str, Any] = msgspec.to_builtins(msgspec.convert(data, RetryPolicy))
            return converted
        except msgspec.ValidationError as err:
            raise self._error(f"{field}: {str(err).replace('Object contains unknown', 'unknown')}") from None

    def _schema(self, field: str, schema: Mapping[str, Any]) -> dict[str, Any]:
        value = self._json(field, dict(schema))
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.exceptions.SchemaError as err:
            raise self._error(f"{field}: not a valid JSON Schema: {err.message}") from None
        return dict(value)


def duration_ns(value: Any) -> int:
    """Seconds (int or float), a ``timedelta`` or a Go-style string ("1m30s") as integer nanoseconds."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        ns = (value.days * 86_400 + value.seconds) * SECOND + value.microseconds * MICROSECOND
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        ns = round(value * SECOND)
    else:
        raise InvalidDuration(value, 'expected seconds, a timedelta or a string such as "30s"')
    if not 0 <= ns <= _MAX_NS:
        raise InvalidDuration(value, "must be between 0 and about 292 years")
    return ns
