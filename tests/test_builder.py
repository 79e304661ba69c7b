"""WorkflowBuilder: Python definitions that equal their JSON twins, and misuse caught at the call."""

from __future__ import annotations

import ast
import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypedDict

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain.builder import StepRef, WorkflowBuilder, duration_ns, ref
from dagnats.domain.definition import Match, RetryPolicy, decode_workflow
from dagnats.domain.errors import BuilderError, DagnatsError, WorkflowInvalid
from dagnats.domain.validate import parse_and_validate, validate

from strategies import graph_definition, graphs

ROOT = Path(__file__).resolve().parents[1]
S = 1_000_000_000


def from_json(steps: list[dict[str, Any]], name: str = "wf", version: str = "1", **fields: Any):
    """The validated WorkflowDef of a hand-written JSON document."""
    return parse_and_validate(json.dumps({"name": name, "version": version, "steps": steps, **fields}))


def builtins(wf) -> dict[str, Any]:
    return msgspec.to_builtins(wf)


# ---- the hello pipeline ------------------------------------------------------------------------


def hello_pipeline() -> WorkflowBuilder:
    b = WorkflowBuilder("hello-pipeline").version("1.0")
    greet = b.task("greet", "greet")
    upper = b.task("uppercase", "uppercase").after(greet)
    b.task("reverse", "reverse").after(upper)
    return b


def test_hello_pipeline_built_in_python_equals_the_json_file():
    from_file = validate(decode_workflow((ROOT / "examples/hello-pipeline/pipeline.json").read_bytes()))
    built = hello_pipeline().build()
    assert built == from_file
    assert builtins(built) == builtins(from_file)


def test_version_defaults_to_1_like_the_go_builder():
    b = WorkflowBuilder("wf")
    b.task("a", "work")
    assert b.build().version == "1"


def test_example_script_prints_a_definition_that_registers(tmp_path):
    import contextlib
    import io
    import runpy

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(ROOT / "examples/builder/build_pipeline.py"), run_name="__main__")
    wf = parse_and_validate(out.getvalue())
    assert [s.id for s in wf.steps] == ["greet", "uppercase", "reverse"]
    assert wf.step("greet").retry is not None and wf.step("greet").timeout > 0


# ---- every method sets the field the JSON path would --------------------------------------------

# name -> (modify step "s", which already exists after step "a"; the JSON fields of "s")
STEP_MODIFIERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "after": (lambda s, a: s.after(a), {"depends_on": ["a"]}),
    "after twice is one dependency": (lambda s, a: s.after(a).after(a, a), {"depends_on": ["a"]}),
    "after_any": (lambda s, a: s.after_any(a), {"after_any": ["a"]}),
    "with_retries": (lambda s, a: s.with_retries(3), {"retries": 3}),
    "with_retry keywords": (
        lambda s, a: s.with_retry(
            max_attempts=3, strategy="exponential", initial_delay=1, max_delay="30s", multiplier=2.0
        ),
        {
            "retry": {
                "max_attempts": 3,
                "strategy": "exponential",
                "initial_delay": "1s",
                "max_delay": "30s",
                "multiplier": 2.0,
            }
        },
    ),
    "with_retry RetryPolicy": (
        lambda s, a: s.with_retry(RetryPolicy(max_attempts=2, strategy="linear", initial_delay="500ms")),
        {"retry": {"max_attempts": 2, "strategy": "linear", "initial_delay": "500ms"}},
    ),
    "with_retry dict": (
        lambda s, a: s.with_retry({"max_attempts": 2, "initial_delay": timedelta(seconds=2)}),
        {"retry": {"max_attempts": 2, "initial_delay": 2 * S}},
    ),
    "with_timeout seconds": (lambda s, a: s.with_timeout(30), {"timeout": "30s"}),
    "with_timeout float": (lambda s, a: s.with_timeout(1.5), {"timeout": "1.5s"}),
    "with_timeout timedelta": (lambda s, a: s.with_timeout(timedelta(minutes=1, seconds=30)), {"timeout": "1m30s"}),
    "with_timeout string": (lambda s, a: s.with_timeout("250ms"), {"timeout": 250_000_000}),
    "skip_if": (
        lambda s, a: s.after(a).skip_if(a, "skip", "==", True),
        {"depends_on": ["a"], "skip_if": {"step_id": "a", "field": "skip", "op": "==", "value": True}},
    ),
    "skip_if with a tuple value": (
        lambda s, a: s.after(a).skip_if(a, "tags", "!=", ("x", 1)),
        {"depends_on": ["a"], "skip_if": {"step_id": "a", "field": "tags", "op": "!=", "value": ["x", 1]}},
    ),
    "optional": (lambda s, a: s.optional(), {"optional": True}),
    "with_worker_group": (lambda s, a: s.with_worker_group("gpu"), {"worker_group": "gpu"}),
    "with_capabilities": (
        lambda s, a: s.with_capabilities("cuda", "fast").with_capabilities("cuda", "big"),
        {"required_capabilities": ["cuda", "fast", "big"]},
    ),
    "with_input ref": (
        lambda s, a: s.after(a).with_input({"id": ref(a, "user.id"), "all": a, "n": (1, 2)}),
        {"depends_on": ["a"], "input": {"id": {"$ref": "a.user.id"}, "all": {"$ref": "a"}, "n": [1, 2]}},
    ),
    "with_input default": (
        lambda s, a: s.after(a).with_input([a.output("x", default=None), ref(a, default={"k": 1})]),
        {"depends_on": ["a"], "input": [{"$ref": "a.x", "default": None}, {"$ref": "a", "default": {"k": 1}}]},
    ),
    "with_rate_limit": (lambda s, a: s.with_rate_limit(10, "1m"), {"rate_limit": {"limit": 10, "period": "1m"}}),
    "with_keyed_rate_limit": (
        lambda s, a: s.with_keyed_rate_limit("user.id", 5, 60, units=2),
        {"keyed_rate_limit": {"key": "user.id", "limit": 5, "period": "60s", "units": 2}},
    ),
    "with_task_concurrency": (lambda s, a: s.with_task_concurrency(4), {"max_task_concurrency": 4}),
    "singleton": (lambda s, a: s.singleton(), {"singleton": True}),
    "with_metadata merges": (
        lambda s, a: s.with_metadata({"role": "x"}).with_metadata({"team": "y"}),
        {"metadata": {"role": "x", "team": "y"}},
    ),
}


@pytest.mark.parametrize("case", list(STEP_MODIFIERS))
def test_step_modifier_sets_the_field_the_json_path_would(case):
    modify, fields = STEP_MODIFIERS[case]
    b = WorkflowBuilder("wf")
    a = b.task("a", "work")
    s = b.task("s", "work")
    assert modify(s, a) is s
    expected = from_json([{"id": "a", "task": "work"}, {"id": "s", "task": "work", **fields}])
    assert b.build() == expected


def _parent(b: WorkflowBuilder) -> StepRef:
    return b.task("a", "work")


# name -> (add a step "s" after "a", its JSON form without depends_on)
STEP_TYPES: dict[str, tuple[Any, dict[str, Any]]] = {
    "task": (lambda b: b.task("s", "work"), {"task": "work"}),
    "sleep": (lambda b: b.sleep("s", "1m30s"), {"type": "sleep", "config": {"duration": 90 * S}}),
    "sleep cron": (lambda b: b.sleep("s", cron="0 9 * * 1"), {"type": "sleep", "config": {"cron": "0 9 * * 1"}}),
    "sleep until": (
        lambda b: b.sleep("s", until_input_path="wake.at"),
        {"type": "sleep", "config": {"until_input_path": "wake.at"}},
    ),
    "wait_for_event": (
        lambda b: b.wait_for_event("s", "paid", Match(left="order_id", op="eq", right="input.order.id"), timeout=3600),
        {
            "type": "wait_for_event",
            "config": {
                "event": "paid",
                "timeout": 3600 * S,
                "match": {"left": "order_id", "op": "eq", "right": "input.order.id"},
            },
        },
    ),
    "wait_for_event dict match": (
        lambda b: b.wait_for_event(
            "s", "paid", {"left": "id", "op": "eq", "right": "step.a.output.id"}, timeout=timedelta(days=1)
        ),
        {
            "type": "wait_for_event",
            "config": {
                "event": "paid",
                "timeout": 86400 * S,
                "match": {"left": "id", "op": "eq", "right": "step.a.output.id"},
            },
        },
    ),
    "approval minimal": (
        lambda b: b.approval("s", "approvals.deploy", 600),
        {"type": "approval", "config": {"subject": "approvals.deploy", "timeout": 600 * S}},
    ),
    "approval": (
        lambda b: b.approval("s", "manager", "48h", description="ship it?", metadata={"team": "ops"}),
        {
            "type": "approval",
            "config": {
                "subject": "manager",
                "timeout": 48 * 3600 * S,
                "description": "ship it?",
                "metadata": {"team": "ops"},
            },
        },
    ),
    "sub_workflow": (lambda b: b.sub_workflow("s", "child"), {"type": "sub_workflow", "config": {"workflow": "child"}}),
    "sub_workflow detach": (
        lambda b: b.sub_workflow("s", "child", detach=True),
        {"type": "sub_workflow", "config": {"workflow": "child", "detach": True}},
    ),
    "with_detach": (
        lambda b: b.sub_workflow("s", "child").with_detach(),
        {"type": "sub_workflow", "config": {"workflow": "child", "detach": True}},
    ),
    "map": (lambda b: b.map("s", "item"), {"type": "map", "task": "item", "config": {"max_items": 1000}}),
    "map with_max_items": (
        lambda b: b.map("s", "item").with_max_items(50),
        {"type": "map", "task": "item", "config": {"max_items": 50}},
    ),
    "map concurrency": (
        lambda b: b.map("s", "item", max_items=20, concurrency=4),
        {"type": "map", "task": "item", "config": {"max_items": 20, "concurrency": 4}},
    ),
    "map with_map_concurrency": (
        lambda b: b.map("s", "item").with_map_concurrency(2),
        {"type": "map", "task": "item", "config": {"max_items": 1000, "concurrency": 2}},
    ),
    "agent_loop budgets": (
        lambda b: b.agent_loop("s", "think", max_iterations=9, budget_warn_at=5, budget_force_at=8),
        {
            "type": "agent_loop",
            "task": "think",
            "config": {"max_iterations": 9, "budget_warn_at": 5, "budget_force_at": 8},
        },
    ),
    "agent_loop": (
        lambda b: b.agent_loop("s", "think", max_iterations=5, max_duration="10m", loop_delay=2),
        {
            "type": "agent_loop",
            "task": "think",
            "config": {"max_iterations": 5, "max_duration": 600 * S, "loop_delay": 2 * S},
        },
    ),
    "agent_loop modifiers": (
        lambda b: b.agent_loop("s", "think").with_max_iterations(5).with_max_duration(60).with_loop_delay("1s"),
        {
            "type": "agent_loop",
            "task": "think",
            "config": {"max_iterations": 5, "max_duration": 60 * S, "loop_delay": S},
        },
    ),
    "agent": (
        lambda b: b.agent("s", "claude", {"role": "reviewer"}),
        {"type": "agent", "task": "claude", "metadata": {"role": "reviewer"}},
    ),
    "planner minimal": (
        lambda b: b.planner("s", "plan", 3),
        {"type": "planner", "task": "plan", "config": {"max_steps": 3}},
    ),
    "planner": (
        lambda b: b.planner("s", "plan", 8, max_depth=3, allowed_tasks=["fetch", "store"]),
        {
            "type": "planner",
            "task": "plan",
            "config": {"max_steps": 8, "max_depth": 3, "allowed_tasks": ["fetch", "store"]},
        },
    ),
}


@pytest.mark.parametrize("case", list(STEP_TYPES))
def test_step_type_sets_type_and_config_as_the_json_form_would(case):
    add, fields = STEP_TYPES[case]
    b = WorkflowBuilder("wf")
    a = b.task("a", "work")
    add(b).after(a)
    expected = from_json([{"id": "a", "task": "work"}, {"id": "s", "depends_on": ["a"], **fields}])
    assert b.build() == expected


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "lte", "gt", "gte"])
def test_wait_for_event_takes_every_operator_the_engine_compares_with(op):
    b = WorkflowBuilder("wf")
    a = b.task("a", "work")
    b.wait_for_event("s", "reading", Match(left="celsius", op=op, right="step.a.output.limit"), timeout="5m").after(a)
    config = {
        "event": "reading",
        "match": {"left": "celsius", "op": op, "right": "step.a.output.limit"},
        "timeout": 300 * S,
    }
    expected = from_json(
        [{"id": "a", "task": "work"}, {"id": "s", "type": "wait_for_event", "depends_on": ["a"], "config": config}]
    )
    assert b.build() == expected


def test_every_step_config_field_can_be_written_with_the_builder():
    # Each config struct's fields, against the fields the builder's methods write.
    from dagnats.domain.definition import CONFIG_TYPES

    b = WorkflowBuilder("wf")
    a = b.task("a", "work")
    b.sleep("sleep", 1).after(a)
    b.sleep("cron", cron="0 9 * * 1").after(a)
    b.sleep("until", until_input_path="at").after(a)
    b.wait_for_event("wait", "e", Match("x", "gte", "input.y"), timeout=1).after(a)
    b.approval("approval", "s", 1, description="d", metadata={"k": "v"}).after(a)
    b.sub_workflow("child", "other", detach=True).after(a)
    b.map("map", "t", max_items=5, concurrency=2).after(a)
    b.agent_loop("loop", "t", 3, max_duration=9, loop_delay=1, budget_warn_at=1, budget_force_at=2).after(a)
    b.planner("planner", "t", 4, max_depth=2, allowed_tasks=["t"]).after(a)
    written: dict[str, set[str]] = {}
    for step in b.to_dict()["steps"][1:]:
        written.setdefault(step["type"], set()).update(step["config"])
    for step_type, fields in written.items():
        assert fields == set(CONFIG_TYPES[step_type].__struct_fields__), step_type
    assert set(written) == set(CONFIG_TYPES) - {"normal", "agent", "respond"}


def test_config_durations_read_the_same_as_go_style_strings_in_json():
    # The JSON path keeps config as written ("30s"); the builder stores nanoseconds. Both parse alike.
    b = WorkflowBuilder("wf")
    b.sleep("s", 30)
    written = from_json([{"id": "s", "type": "sleep", "config": {"duration": "30s"}}])
    assert b.build().step("s").parsed_config() == written.step("s").parsed_config()


# name -> (modify the builder, the JSON workflow fields)
WORKFLOW_SETTINGS: dict[str, tuple[Any, dict[str, Any]]] = {
    "version": (lambda b: b.version("2.1"), {"version": "2.1"}),
    "description": (lambda b: b.description("greets"), {"description": "greets"}),
    "with_timeout": (lambda b: b.with_timeout(timedelta(hours=1)), {"timeout": "1h"}),
    "with_default_retry": (
        lambda b: b.with_default_retry(max_attempts=4, strategy="fixed", initial_delay=0.25),
        {"default_retry": {"max_attempts": 4, "initial_delay": "250ms"}},
    ),
    "with_idempotency_key": (lambda b: b.with_idempotency_key("order.id"), {"idempotency_key": "order.id"}),
    "with_singleton": (lambda b: b.with_singleton("skip"), {"singleton": {"mode": "skip"}}),
    "with_singleton key": (
        lambda b: b.with_singleton("cancel", "user.id"),
        {"singleton": {"mode": "cancel", "key": "user.id"}},
    ),
    "cancel_on": (lambda b: b.cancel_on("shutdown"), {"cancel_on": [{"event": "shutdown"}]}),
    "cancel_on match timeout": (
        lambda b: b.cancel_on("order-cancelled", left="order_id", right="input.order_id", timeout="1h").cancel_on(
            "shutdown"
        ),
        {
            "cancel_on": [
                {
                    "event": "order-cancelled",
                    "timeout": "1h",
                    "match": {"left": "order_id", "op": "eq", "right": "input.order_id"},
                },
                {"event": "shutdown"},
            ]
        },
    ),
    "with_concurrency": (
        lambda b: b.with_concurrency(max_runs=3, max_steps=2),
        {"concurrency": {"max_runs": 3, "max_steps": 2}},
    ),
    "with_priority": (
        lambda b: b.with_priority("tier", {"gold": -60, "free": 30}, default_offset=10),
        {"priority": {"key": "tier", "rules": {"gold": -60, "free": 30}, "default_offset": 10}},
    ),
    "with_sticky": (lambda b: b.with_sticky("soft"), {"sticky": "soft"}),
    "with_sticky hard": (lambda b: b.with_sticky("hard").with_timeout(60), {"sticky": "hard", "timeout": "1m"}),
    "with_max_step_error_bytes": (lambda b: b.with_max_step_error_bytes(1024), {"max_step_error_bytes": 1024}),
    "with_input_schema": (
        lambda b: b.with_input_schema({"type": "object", "required": ["name"]}),
        {"input_schema": {"type": "object", "required": ["name"]}},
    ),
    "with_output_schema": (lambda b: b.with_output_schema({"type": "string"}), {"output_schema": {"type": "string"}}),
}


@pytest.mark.parametrize("case", list(WORKFLOW_SETTINGS))
def test_workflow_setting_sets_the_field_the_json_path_would(case):
    modify, fields = WORKFLOW_SETTINGS[case]
    b = WorkflowBuilder("wf")
    b.task("a", "work")
    assert modify(b) is b
    assert b.build() == from_json([{"id": "a", "task": "work"}], **{"version": "1", **fields})


@pytest.mark.parametrize("value", [90, 90.0, timedelta(seconds=90), "1m30s", "90s", "90000ms"])
def test_durations_in_every_accepted_form_are_the_same_nanoseconds(value):
    assert duration_ns(value) == 90 * S


# ---- aux steps, round trips -----------------------------------------------------------------------


def test_on_failure_and_compensate_targets_become_aux_steps():
    b = WorkflowBuilder("saga")
    charge = b.task("charge", "charge")
    ship = b.task("ship", "ship").after(charge)
    refund = b.task("refund", "refund")
    alert = b.task("alert", "alert")
    charge.compensate(refund)
    ship.on_failure(alert)
    wf = b.build()
    assert wf.aux_steps == {"refund": True, "alert": True}
    assert wf == from_json(
        [
            {"id": "charge", "task": "charge", "compensate": "refund"},
            {"id": "ship", "task": "ship", "depends_on": ["charge"], "on_failure": "alert"},
            {"id": "refund", "task": "refund"},
            {"id": "alert", "task": "alert"},
        ],
        name="saga",
    )


def test_to_json_and_from_json_round_trip():
    b = hello_pipeline()
    b.with_default_retry(max_attempts=3, strategy="exponential", initial_delay=1, max_delay=30, multiplier=2)
    b.with_timeout("10m").cancel_on("stop", left="id", right="input.id")
    built = b.build()
    assert decode_workflow(b.to_json()) == built
    assert WorkflowBuilder.from_json(b.to_json()) == built
    assert validate(decode_workflow(msgspec.json.encode(built))) == built


def test_to_dict_is_the_json_document_and_a_copy():
    b = hello_pipeline()
    doc = b.to_dict()
    assert doc == {
        "name": "hello-pipeline",
        "version": "1.0",
        "steps": [
            {"id": "greet", "task": "greet"},
            {"id": "uppercase", "task": "uppercase", "depends_on": ["greet"]},
            {"id": "reverse", "task": "reverse", "depends_on": ["uppercase"]},
        ],
    }
    doc["steps"][0]["task"] = "changed"
    assert b.build().step("greet").task == "greet"


# ---- schemas from types -------------------------------------------------------------------------


class Address(msgspec.Struct):
    city: str
    zip: str = ""


class Order(msgspec.Struct):
    id: int
    items: list[str]
    ship_to: Address
    status: Literal["new", "paid"] = "new"


@dataclasses.dataclass
class Receipt:
    total: float
    paid: bool


class Greeting(TypedDict):
    name: str
    times: int


class Tree(msgspec.Struct):
    label: str
    children: list[Tree] = []


SCHEMA_CASES = [
    (
        Order,
        Order(id=1, items=["a"], ship_to=Address(city="Oslo")),
        [
            {"id": "1", "items": [], "ship_to": {"city": "x"}},
            {"id": 1, "items": []},
            {"id": 1, "items": [], "ship_to": {"city": "x"}, "status": "lost"},
        ],
    ),
    (Receipt, Receipt(total=9.5, paid=True), [{"total": "9.5", "paid": True}, {"total": 1.0}]),
    (Greeting, Greeting(name="Ada", times=2), [{"name": "Ada"}, {"name": 3, "times": 1}]),
    (Tree, Tree("root", [Tree("leaf")]), [{"label": "root", "children": [{"children": []}]}]),
    (list[int], [1, 2, 3], [[1, "2"], {"a": 1}]),
    (str, "hello", [3, None]),
    (dict[str, float], {"a": 1.5}, [{"a": "x"}]),
]


@pytest.mark.parametrize(("tp", "good", "bad"), SCHEMA_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_with_schemas_accepts_real_instances_and_rejects_others(tp, good, bad):
    b = WorkflowBuilder("wf")
    b.task("a", "work")
    wf = b.with_schemas(tp, tp).build()  # build() also runs validate()'s schema check
    for schema in (wf.input_schema, wf.output_schema):
        jsonschema.validators.validator_for(schema).check_schema(schema)
        jsonschema.validate(msgspec.to_builtins(good), schema)
        for instance in bad:
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(instance, schema)
    assert decode_workflow(b.to_json()) == wf


def test_schema_of_a_struct_reads_as_the_struct_itself():
    b = WorkflowBuilder("wf")
    b.task("a", "work")
    schema = b.with_schemas(Order).build().input_schema
    assert schema["type"] == "object" and schema["required"] == ["id", "items", "ship_to"]
    assert set(schema["$defs"]) == {"Address"}  # Order itself is the root, not a $ref to it
    assert b.build().output_schema is None


def test_with_schemas_of_an_unsupported_type_raises_at_once():
    with pytest.raises(BuilderError, match="input_schema: cannot describe"):
        WorkflowBuilder("wf").with_schemas(object)


def test_an_invalid_explicit_schema_raises_at_once():
    with pytest.raises(BuilderError, match="input_schema: not a valid JSON Schema"):
        WorkflowBuilder("wf").with_input_schema({"type": "no-such-type"})


# ---- misuse raises at the call ---------------------------------------------------------------------


def _two() -> tuple[WorkflowBuilder, StepRef, StepRef]:
    b = WorkflowBuilder("this")
    return b, b.task("a", "work"), b.task("b", "work")


def _foreign(method: str):
    def act():
        _, a, _ = _two()
        other = WorkflowBuilder("other")
        getattr(a, method)(other.task("x", "work"))

    return act


MISUSE: dict[str, tuple[Any, str]] = {
    "after a foreign step": (_foreign("after"), "step 'x' belongs to workflow 'other', not 'this'"),
    "after_any a foreign step": (_foreign("after_any"), "step 'x' belongs to workflow 'other', not 'this'"),
    "on_failure a foreign step": (_foreign("on_failure"), "step 'x' belongs to workflow 'other', not 'this'"),
    "compensate a foreign step": (_foreign("compensate"), "step 'x' belongs to workflow 'other', not 'this'"),
    "a foreign step of the same name": (
        lambda: _two()[1].after(WorkflowBuilder("this").task("x", "work")),
        "step 'x' belongs to another builder of workflow 'this'",
    ),
    "a foreign step in an input template": (_foreign("with_input"), "step 'x' belongs to workflow 'other'"),
    "after a string": (lambda: _two()[1].after("b"), "expected a StepRef returned by the builder, got 'b'"),
    "after itself": (lambda: (lambda a: a.after(a))(_two()[1]), "step 'a' cannot come after itself"),
    "after_any itself": (lambda: (lambda a: a.after_any(a))(_two()[1]), "step 'a' cannot come after itself"),
    "on_failure itself": (lambda: (lambda a: a.on_failure(a))(_two()[1]), "step 'a' cannot be its own on_failure"),
    "compensate itself": (lambda: (lambda a: a.compensate(a))(_two()[1]), "step 'a' cannot be its own compensate"),
    "duplicate step id": (lambda: _two()[0].task("a", "other"), "step 'a' is already defined in workflow 'this'"),
    "step id with a dot": (lambda: WorkflowBuilder("wf").task("a.b", "work"), "invalid step id 'a.b'"),
    "step id with a wildcard": (lambda: WorkflowBuilder("wf").task("*", "work"), "invalid step id '*'"),
    "task with a space": (lambda: WorkflowBuilder("wf").task("a", "do it"), "invalid task 'do it'"),
    "workflow name": (lambda: WorkflowBuilder("my>flow"), "invalid workflow name 'my>flow'"),
    "event name": (lambda: WorkflowBuilder("wf").wait_for_event("w", "a.b", timeout=1), "invalid event 'a.b'"),
    "sub-workflow name": (lambda: WorkflowBuilder("wf").sub_workflow("s", "x y"), "invalid sub-workflow name"),
    "worker group": (lambda: _two()[1].with_worker_group("g.1"), "invalid worker group 'g.1'"),
    "negative timeout": (lambda: _two()[1].with_timeout(-1), "step 'a': timeout: invalid duration -1"),
    "unparsable timeout": (lambda: _two()[1].with_timeout("soon"), "step 'a': timeout: invalid duration 'soon'"),
    "boolean timeout": (lambda: _two()[1].with_timeout(True), "invalid duration True"),
    "infinite timeout": (lambda: _two()[1].with_timeout(float("inf")), "invalid duration inf"),
    "negative timedelta": (lambda: WorkflowBuilder("wf").with_timeout(timedelta(seconds=-1)), "timeout: invalid"),
    "bad retry delay": (lambda: _two()[1].with_retry(initial_delay="1 second"), "retry.initial_delay: invalid"),
    "unknown retry field": (lambda: _two()[1].with_retry(attempts=3), "retry: unknown field `attempts`"),
    "unknown retry strategy": (
        lambda: _two()[1].with_retry(strategy="random"),
        "retry: Invalid enum value 'random' - at `$.strategy`",
    ),
    "negative retries": (lambda: _two()[1].with_retries(-1), "retries must be an integer >= 0"),
    "skip_if on a non-dependency": (
        lambda: (lambda b, a, s: s.skip_if(a, "ok", "==", True))(*_two()),
        "step 'b': skip_if parent 'a' is not a dependency of 'b'; call .after(a) first",
    ),
    "skip_if with a bad op": (
        lambda: (lambda b, a, s: s.after(a).skip_if(a, "ok", "=", True))(*_two()),
        "skip_if op must be one of",
    ),
    "skip_if value not JSON": (
        lambda: (lambda b, a, s: s.after(a).skip_if(a, "ok", "==", object()))(*_two()),
        "skip_if value: not a JSON",
    ),
    "with_max_items on a task": (
        lambda: _two()[1].with_max_items(3),
        "step 'a': with_max_items applies to map steps, but 'a' is a normal step",
    ),
    "with_max_iterations on a map": (
        lambda: WorkflowBuilder("wf").map("m", "t").with_max_iterations(3),
        "with_max_iterations applies to agent_loop steps, but 'm' is a map step",
    ),
    "with_detach on a task": (lambda: _two()[1].with_detach(), "with_detach applies to sub_workflow steps"),
    "with_loop_delay on a task": (lambda: _two()[1].with_loop_delay(1), "with_loop_delay applies to agent_loop"),
    "sleep with two forms": (lambda: WorkflowBuilder("wf").sleep("s", 1, cron="* * * * *"), "exactly one of"),
    "sleep with no form": (lambda: WorkflowBuilder("wf").sleep("s"), "exactly one of"),
    "map of zero items": (
        lambda: WorkflowBuilder("wf").map("m", "t", max_items=0),
        "step 'm': max_items must be an integer >= 1",
    ),
    "agent_loop of zero iterations": (
        lambda: WorkflowBuilder("wf").agent_loop("l", "t", max_iterations=0),
        "step 'l': max_iterations must be an integer >= 1",
    ),
    "priority offsets": (
        lambda: WorkflowBuilder("wf").with_priority("tier", {"gold": "high"}),
        "priority: rules must map strings to integer offsets",
    ),
    "match op": (
        lambda: WorkflowBuilder("wf").wait_for_event("w", "e", Match("a", "like", "input.b"), timeout=1),
        "match op must be one of eq, ne, lt, lte, gt, gte (got 'like')",
    ),
    "cancel_on op": (
        lambda: WorkflowBuilder("wf").cancel_on("stop", left="id", op="ne", right="input.id"),
        "match op must be \"eq\" (got 'ne')",
    ),
    "with_map_concurrency on a task": (
        lambda: _two()[1].with_map_concurrency(2),
        "with_map_concurrency applies to map steps, but 'a' is a normal step",
    ),
    "negative map concurrency": (
        lambda: WorkflowBuilder("wf").map("m", "t", concurrency=-1),
        "step 'm': concurrency must be an integer >= 0",
    ),
    "cancel_on half a match": (lambda: WorkflowBuilder("wf").cancel_on("stop", left="id"), "give both left and right"),
    "singleton mode": (lambda: WorkflowBuilder("wf").with_singleton("once"), "singleton mode must be"),
    "sticky strategy": (lambda: WorkflowBuilder("wf").with_sticky("firm"), 'sticky must be "soft" or "hard"'),
    "idempotency key": (lambda: WorkflowBuilder("wf").with_idempotency_key("a..b"), "is not a dot path"),
    "keyed rate limit key": (lambda: _two()[1].with_keyed_rate_limit("$user", 1, 1), "keyed_rate_limit.key"),
    "metadata values": (lambda: _two()[1].with_metadata({"n": 1}), "metadata must map strings to strings"),
    "ref path": (lambda: ref(_two()[1], "a..b"), "ref: 'a.a..b' is not"),
    "input template not JSON": (lambda: _two()[1].with_input({"f": open}), "input: not a JSON value"),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_misuse_raises_builder_error_at_the_call(case):
    act, message = MISUSE[case]
    with pytest.raises(BuilderError) as info:
        act()
    assert message in str(info.value)
    assert isinstance(info.value, DagnatsError) and isinstance(info.value, ValueError)


def test_builder_error_carries_the_workflow_and_step():
    _, a, _ = _two()
    with pytest.raises(BuilderError) as info:
        a.after(a)
    assert (info.value.workflow, info.value.step_id) == ("this", "a")


def test_a_failed_call_leaves_the_builder_unchanged():
    b, a, s = _two()
    before = b.to_dict()
    with pytest.raises(BuilderError):
        s.after(a, s)
    with pytest.raises(BuilderError):
        b.agent("c", "claude", {"n": 1})
    with pytest.raises(BuilderError):
        b.agent_loop("c", "think", max_iterations=5, loop_delay="later")
    with pytest.raises(BuilderError):
        b.sleep("c", -1)
    assert b.to_dict() == before
    b.task("c", "work")  # the id is still free


def test_cyclic_graph_is_refused_by_build():
    b, a, s = _two()
    a.after(s)
    s.after(a)
    with pytest.raises(WorkflowInvalid, match="cycle among steps"):
        b.build()


def test_graph_rules_are_left_to_validate_and_reported_together():
    b = WorkflowBuilder("wf")
    m = b.map("m", "item")
    loop = b.agent_loop("loop", "think")
    target = b.task("alert", "alert").after(m)
    loop.on_failure(target)
    with pytest.raises(WorkflowInvalid) as info:
        b.build()
    text = str(info.value)
    assert "a map step needs exactly one dependency" in text
    assert "config.max_iterations: must be greater than 0" in text
    assert "must not have depends_on" in text


def test_an_empty_builder_does_not_build():
    with pytest.raises(WorkflowInvalid, match="at least one step"):
        WorkflowBuilder("wf").build()


# ---- properties: the builder and JSON describe the same graphs -----------------------------------


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Chains and fan-outs/fan-ins: each step depends on some earlier steps; some settings per step."""
    steps = []
    for index in range(draw(st.integers(1, 10))):
        earlier = [f"s{i}" for i in range(index)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        steps.append(
            {
                "id": f"s{index}",
                "task": draw(st.sampled_from(["fetch", "store", "greet"])),
                "deps": deps,
                "timeout": draw(st.sampled_from([None, 5, "1m", timedelta(milliseconds=250)])),
                "retries": draw(st.sampled_from([None, 0, 2])),
                "optional": draw(st.booleans()),
            }
        )
    return steps


def _build(steps: list[dict[str, Any]]) -> WorkflowBuilder:
    b = WorkflowBuilder("random")
    refs: dict[str, StepRef] = {}
    for spec in steps:
        r = refs[spec["id"]] = b.task(spec["id"], spec["task"]).after(*(refs[d] for d in spec["deps"]))
        if spec["timeout"] is not None:
            r.with_timeout(spec["timeout"])
        if spec["retries"] is not None:
            r.with_retries(spec["retries"])
        if spec["optional"]:
            r.optional()
    return b


def _written(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for spec in steps:
        step: dict[str, Any] = {"id": spec["id"], "task": spec["task"], "depends_on": spec["deps"]}
        if spec["timeout"] is not None:
            step["timeout"] = duration_ns(spec["timeout"])
        if spec["retries"] is not None:
            step["retries"] = spec["retries"]
        if spec["optional"]:
            step["optional"] = True
        out.append(step)
    return out


@settings(max_examples=200)
@given(dags())
def test_random_dags_built_in_python_equal_the_same_dags_written_as_json(steps):
    b = _build(steps)
    expected = from_json(_written(steps), name="random")
    assert b.build() == expected
    assert decode_workflow(b.to_json()) == expected


@settings(max_examples=200)
@given(graphs())
def test_any_graph_is_accepted_or_refused_exactly_as_its_json_twin(graph):
    b = WorkflowBuilder("graph").version("")
    refs = {node: b.task(node, "work") for node in graph}
    self_loop = any(dep == node for node, deps in graph.items() for dep, _ in deps)
    try:
        for node, deps in graph.items():
            for dep, kind in deps:
                (refs[node].after if kind == "depends_on" else refs[node].after_any)(refs[dep])
    except BuilderError as err:
        assert self_loop and "cannot come after itself" in str(err)
        return
    assert not self_loop
    twin = graph_definition(graph)
    try:
        expected = validate(twin)
    except WorkflowInvalid as err:
        with pytest.raises(WorkflowInvalid) as info:
            b.build()
        assert info.value.issues == err.issues
    else:
        assert b.build() == expected


# ---- purity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["builder.py", "schema_gen.py"])
def test_builder_modules_bring_no_io(module):
    tree = ast.parse((ROOT / "domain" / module).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    forbidden = {"nats", "pykka", "asyncio", "threading", "time", "uuid", "random", "logging", "opentelemetry"}
    assert not imported & forbidden
