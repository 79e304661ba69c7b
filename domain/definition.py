"""The workflow definition language: WorkflowDef, StepDef and their configs.

JSON field names are the seed's. Durations accept Go-style strings ("30s")
or integer nanoseconds and are stored as integer nanoseconds. Unknown
fields are rejected, naming the field. Structural rules that span several
fields or steps live in ``validate.py``; this module only parses.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .durations import parse_duration
from .errors import DefinitionDecodeError, InvalidDuration
from .json_document import duplicate_key_problem, where_too_deep
from .triggers import TriggerDef
from .values import MAX_DEPTH, short_path

Duration = int | str

StepType = Literal[
    "normal",
    "agent_loop",
    "sub_workflow",
    "agent",
    "map",
    "sleep",
    "wait_for_event",
    "approval",
    "planner",
    "respond",
]
STEP_TYPES: tuple[str, ...] = StepType.__args__  # type: ignore[attr-defined]
WORKER_STEP_TYPES = frozenset({"normal", "agent_loop", "agent", "map", "planner"})
# Step types this engine runs (all of them).
EXECUTED_STEP_TYPES = frozenset(STEP_TYPES)
COMPARISON_OPS = ("==", "!=", "<", ">", "<=", ">=")
# Values in a definition (inputs, configs, schemas) nest at most MAX_DEPTH levels;
# the definition's own structure around them is at most five levels deep.
MAX_DOCUMENT_DEPTH = MAX_DEPTH + 8
TOO_DEEP = f"nested too deeply (a value in a definition may nest at most {MAX_DEPTH} levels)"


class _Def(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of definition structs: turns the fields in ``DURATIONS`` into ns."""

    DURATIONS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.DURATIONS:
            raw = getattr(self, name)
            if raw is None or isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
                continue
            try:
                value = parse_duration(raw)
            except InvalidDuration as err:
                raise ValueError(f"`{name}`: {err}") from None
            msgspec.structs.force_setattr(self, name, value)


# ---- retry -----------------------------------------------------------------


class RetryPolicy(_Def, frozen=True):
    """``max_attempts`` counts retries after the first failure."""

    DURATIONS: ClassVar[tuple[str, ...]] = ("initial_delay", "max_delay")
    max_attempts: int = 0
    strategy: Literal["fixed", "linear", "exponential"] = "fixed"
    initial_delay: Duration = 0
    max_delay: Duration = 0
    multiplier: float = 0.0


# ---- conditions and matches --------------------------------------------------


class ParentCond(_Def, frozen=True):
    """skip_if: compare a top-level field of a parent's JSON output."""

    step_id: str
    field: str
    op: str
    value: Any = None


class Match(_Def, frozen=True):
    left: str
    op: str
    right: str


class CancelOn(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    event: str
    match: Match | None = None
    timeout: Duration = 0


# ---- flow-control configs -----------------------------------------------------


class RateLimit(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("period",)
    limit: int
    period: Duration


class KeyedRateLimit(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("period",)
    key: str
    limit: int
    period: Duration
    units: int = 1


class ConcurrencyLimit(_Def, frozen=True):
    max_runs: int = 0
    max_steps: int = 0


class PriorityConfig(_Def, frozen=True):
    key: str
    rules: dict[str, int] = {}
    default_offset: int = 0


class SingletonConfig(_Def, frozen=True):
    mode: Literal["skip", "cancel"]
    key: str = ""


# ---- per-type step configs ------------------------------------------------------


class AgentLoopConfig(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("max_duration", "loop_delay")
    max_iterations: int = 0
    max_duration: Duration = 0
    loop_delay: Duration = 0
    budget_warn_at: int = 0
    budget_force_at: int = 0


class MapConfig(_Def, frozen=True):
    max_items: int = 1000
    # At most this many elements in flight at once; 0: no limit.
    concurrency: int = 0


class SubWorkflowConfig(_Def, frozen=True):
    workflow: str = ""
    detach: bool = False


class SleepConfig(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("duration",)
    duration: Duration | None = None
    cron: str | None = None
    until_input_path: str | None = None


class WaitForEventConfig(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    event: str = ""
    match: Match | None = None
    timeout: Duration = 0


class ApprovalConfig(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    subject: str = ""
    timeout: Duration = 0
    description: str = ""
    metadata: dict[str, str] | None = None


class PlannerConfig(_Def, frozen=True):
    max_steps: int = 0
    max_depth: int = 0
    allowed_tasks: tuple[str, ...] = ()


class RespondConfig(_Def, frozen=True):
    status: int = 200
    headers: dict[str, str] | None = None
    body_from: str = ""
    content_type: str = "application/json"


class EmptyConfig(_Def, frozen=True):
    """Step types without a config of their own."""


CONFIG_TYPES: dict[str, type[_Def]] = {
    "normal": EmptyConfig,
    "agent": EmptyConfig,
    "agent_loop": AgentLoopConfig,
    "map": MapConfig,
    "sub_workflow": SubWorkflowConfig,
    "sleep": SleepConfig,
    "wait_for_event": WaitForEventConfig,
    "approval": ApprovalConfig,
    "planner": PlannerConfig,
    "respond": RespondConfig,
}


# ---- steps and workflows ------------------------------------------------------------


class StepDef(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    id: str
    task: str = ""
    type: StepType = "normal"
    depends_on: tuple[str, ...] = ()
    config: dict[str, Any] | None = None
    timeout: Duration = 0
    retries: int = 0
    retry: RetryPolicy | None = None
    skip_if: ParentCond | None = None
    metadata: dict[str, str] | None = None
    worker_group: str = ""
    on_failure: str = ""
    compensate: str = ""
    rate_limit: RateLimit | None = None
    keyed_rate_limit: KeyedRateLimit | None = None
    max_task_concurrency: int = 0
    singleton: bool = False
    required_capabilities: tuple[str, ...] = ()
    # Explicit input wiring: a JSON template whose {"$ref": "step.path"} objects
    # are replaced by upstream outputs.
    input: Any | UnsetType = UNSET
    optional: bool = False
    after_any: tuple[str, ...] = ()

    def parsed_config(self) -> _Def:
        """The config decoded into its per-type struct (raises ValueError)."""
        return parse_config(self.type, self.config)


class WorkflowDef(_Def, frozen=True):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    name: str
    steps: tuple[StepDef, ...]
    version: str = ""
    description: str = ""
    default_retry: RetryPolicy | None = None
    concurrency: ConcurrencyLimit | None = None
    timeout: Duration = 0
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    aux_steps: dict[str, bool] = {}
    idempotency_key: str = ""
    sticky: Literal["", "soft", "hard"] = ""
    priority: PriorityConfig | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    singleton: SingletonConfig | None = None
    max_step_error_bytes: int = 4096
    # Triggers that start runs of this workflow (triggers.py): written to the triggers
    # KV when the workflow is registered, not kept in the stored definition.
    triggers: tuple[TriggerDef, ...] = ()

    def step(self, step_id: str) -> StepDef:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def step_map(self) -> dict[str, StepDef]:
        return {step.id: step for step in self.steps}


def parse_config(step_type: str, config: dict[str, Any] | None) -> _Def:
    kind = CONFIG_TYPES[step_type]
    try:
        return msgspec.convert(config or {}, kind)
    except msgspec.ValidationError as err:
        raise ValueError(str(err).replace("`$", "`$.config")) from None


_DEF_DECODER = msgspec.json.Decoder(WorkflowDef)
_ENCODER = msgspec.json.Encoder()


def decode_workflow(data: bytes | str, source: str = "workflow") -> WorkflowDef:
    """Parse a JSON definition; every problem becomes a DefinitionDecodeError."""
    try:
        return _DEF_DECODER.decode(data)
    except msgspec.ValidationError as err:
        raise DefinitionDecodeError(source, _explain(err)) from None
    except msgspec.DecodeError as err:
        raise DefinitionDecodeError(source, f"invalid JSON: {err}") from None
    except RecursionError:
        raise DefinitionDecodeError(source, TOO_DEEP) from None


def decode_workflow_strictly(data: bytes | str, source: str = "workflow") -> WorkflowDef:
    """decode_workflow for a document a user wrote: also refuses a key given twice in
    one object (a decoder keeps the last) and nesting deeper than MAX_DOCUMENT_DEPTH,
    naming where. Costs a second parse: meant for registration, not stored definitions."""
    where = where_too_deep(data, MAX_DOCUMENT_DEPTH)
    if where:
        raise DefinitionDecodeError(source, f"{short_path(where)}: {TOO_DEEP}")
    wf = decode_workflow(data, source)
    problem = duplicate_key_problem(data)
    if problem:
        raise DefinitionDecodeError(source, problem)
    return wf


def workflow_from_object(obj: Any, source: str = "workflow") -> WorkflowDef:
    try:
        return msgspec.convert(obj, WorkflowDef)
    except msgspec.ValidationError as err:
        raise DefinitionDecodeError(source, _explain(err)) from None


def encode_workflow(wf: WorkflowDef) -> bytes:
    return _ENCODER.encode(wf)


def workflow_to_object(wf: WorkflowDef) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(wf)
    return data


def _explain(err: msgspec.ValidationError) -> str:
    text = str(err)
    if text.startswith("Object contains unknown field"):
        text = "unknown field " + text.split("unknown field ", 1)[1]
        if text == "unknown field `trigger`":
            text += ' (triggers go in a "triggers" array)'
    return text
