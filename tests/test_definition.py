"""The definition language: every field parses, unknown fields are named, round trips hold."""

import json

import msgspec
import pytest
from hypothesis import given, settings

from dagnats.domain import definition as d
from dagnats.domain.durations import HOUR, MILLISECOND, MINUTE, SECOND
from dagnats.domain.errors import DefinitionDecodeError

from strategies import dag_definitions

FULL_STEP = {
    "id": "fetch",
    "task": "fetch",
    "type": "normal",
    "depends_on": ["start"],
    "timeout": "30s",
    "retries": 2,
    "retry": {
        "max_attempts": 3,
        "strategy": "exponential",
        "initial_delay": "1s",
        "max_delay": 10_000_000_000,
        "multiplier": 2.0,
    },
    "skip_if": {"step_id": "start", "field": "skip", "op": "==", "value": True},
    "metadata": {"role": "fetcher"},
    "worker_group": "gpu",
    "on_failure": "report",
    "compensate": "undo",
    "rate_limit": {"limit": 10, "period": "1m"},
    "max_task_concurrency": 4,
    "singleton": True,
    "required_capabilities": ["control-plane"],
    "input": {"url": {"$ref": "start.url", "default": "http://x"}},
    "optional": True,
    "after_any": ["other"],
}

FULL_WORKFLOW = {
    "name": "everything",
    "version": "1.2",
    "description": "every field",
    "steps": [FULL_STEP],
    "default_retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "5s", "max_delay": "5s"},
    "concurrency": {"max_runs": 3, "max_steps": 10},
    "timeout": "1h",
    "input_schema": {"type": "object"},
    "output_schema": {"type": "string"},
    "aux_steps": {"report": True},
    "idempotency_key": "order.id",
    "sticky": "soft",
    "priority": {"key": "tier", "rules": {"gold": -60}, "default_offset": 30},
    "cancel_on": [
        {"event": "order-cancelled", "match": {"left": "id", "op": "eq", "right": "input.id"}, "timeout": "10m"}
    ],
    "singleton": {"mode": "skip", "key": "user.id"},
    "max_step_error_bytes": 1024,
}


def decode(obj) -> d.WorkflowDef:
    return d.decode_workflow(json.dumps(obj))


def test_every_workflow_field_parses():
    wf = decode(FULL_WORKFLOW)
    assert (wf.name, wf.version, wf.description) == ("everything", "1.2", "every field")
    assert wf.default_retry == d.RetryPolicy(
        max_attempts=2, strategy="fixed", initial_delay=5 * SECOND, max_delay=5 * SECOND
    )
    assert wf.concurrency == d.ConcurrencyLimit(max_runs=3, max_steps=10)
    assert wf.timeout == HOUR
    assert wf.input_schema == {"type": "object"} and wf.output_schema == {"type": "string"}
    assert wf.aux_steps == {"report": True}
    assert wf.idempotency_key == "order.id"
    assert wf.sticky == "soft"
    assert wf.priority == d.PriorityConfig(key="tier", rules={"gold": -60}, default_offset=30)
    assert wf.cancel_on == (
        d.CancelOn(event="order-cancelled", match=d.Match("id", "eq", "input.id"), timeout=10 * MINUTE),
    )
    assert wf.singleton == d.SingletonConfig(mode="skip", key="user.id")
    assert wf.max_step_error_bytes == 1024


def test_every_step_field_parses():
    step = decode(FULL_WORKFLOW).steps[0]
    assert (step.id, step.task, step.type) == ("fetch", "fetch", "normal")
    assert step.depends_on == ("start",) and step.after_any == ("other",)
    assert step.timeout == 30 * SECOND
    assert step.retries == 2
    assert step.retry == d.RetryPolicy(
        max_attempts=3, strategy="exponential", initial_delay=SECOND, max_delay=10 * SECOND, multiplier=2.0
    )
    assert step.skip_if == d.ParentCond(step_id="start", field="skip", op="==", value=True)
    assert step.metadata == {"role": "fetcher"}
    assert (step.worker_group, step.on_failure, step.compensate) == ("gpu", "report", "undo")
    assert step.rate_limit == d.RateLimit(limit=10, period=MINUTE)
    assert step.max_task_concurrency == 4
    assert step.singleton is True and step.optional is True
    assert step.required_capabilities == ("control-plane",)
    assert step.input == {"url": {"$ref": "start.url", "default": "http://x"}}


def test_keyed_rate_limit_parses_with_default_units():
    wf = decode(
        {
            "name": "w",
            "steps": [{"id": "a", "task": "t", "keyed_rate_limit": {"key": "user.id", "limit": 5, "period": "1s"}}],
        }
    )
    assert wf.steps[0].keyed_rate_limit == d.KeyedRateLimit(key="user.id", limit=5, period=SECOND, units=1)


def test_defaults_of_a_minimal_definition():
    wf = decode({"name": "hello-world", "steps": [{"id": "greet", "task": "greet"}]})
    step = wf.steps[0]
    assert step.type == "normal" and step.depends_on == () and step.timeout == 0 and step.retry is None
    assert step.input is msgspec.UNSET
    assert wf.max_step_error_bytes == 4096 and wf.sticky == "" and wf.cancel_on == ()


@pytest.mark.parametrize(
    ("step_type", "config", "expected"),
    [
        (
            "agent_loop",
            {
                "max_iterations": 5,
                "max_duration": "1m",
                "loop_delay": 1_000_000_000,
                "budget_warn_at": 3,
                "budget_force_at": 4,
            },
            d.AgentLoopConfig(
                max_iterations=5, max_duration=MINUTE, loop_delay=SECOND, budget_warn_at=3, budget_force_at=4
            ),
        ),
        ("map", {"max_items": 50}, d.MapConfig(max_items=50)),
        ("map", None, d.MapConfig(max_items=1000)),
        (
            "sub_workflow",
            {"workflow": "payment-flow", "detach": True},
            d.SubWorkflowConfig(workflow="payment-flow", detach=True),
        ),
        ("sleep", {"duration": "1h30m"}, d.SleepConfig(duration=90 * MINUTE)),
        ("sleep", {"duration": 5_000_000_000}, d.SleepConfig(duration=5 * SECOND)),
        ("sleep", {"cron": "0 9 * * 1-5"}, d.SleepConfig(cron="0 9 * * 1-5")),
        ("sleep", {"until_input_path": "wake.at"}, d.SleepConfig(until_input_path="wake.at")),
        (
            "wait_for_event",
            {"event": "paid", "match": {"left": "order", "op": "eq", "right": "input.order"}, "timeout": "24h"},
            d.WaitForEventConfig(event="paid", match=d.Match("order", "eq", "input.order"), timeout=24 * HOUR),
        ),
        (
            "approval",
            {"subject": "Deploy?", "timeout": 3_600_000_000_000, "description": "prod", "metadata": {"team": "ops"}},
            d.ApprovalConfig(subject="Deploy?", timeout=HOUR, description="prod", metadata={"team": "ops"}),
        ),
        (
            "planner",
            {"max_steps": 10, "max_depth": 2, "allowed_tasks": ["search", "summarize"]},
            d.PlannerConfig(max_steps=10, max_depth=2, allowed_tasks=("search", "summarize")),
        ),
        (
            "respond",
            {"status": 201, "headers": {"X-A": "1"}, "body_from": "out", "content_type": "text/plain"},
            d.RespondConfig(status=201, headers={"X-A": "1"}, body_from="out", content_type="text/plain"),
        ),
        ("respond", {}, d.RespondConfig(status=200, content_type="application/json")),
        ("normal", None, d.EmptyConfig()),
        ("agent", {}, d.EmptyConfig()),
    ],
)
def test_every_step_type_config_parses(step_type, config, expected):
    wf = decode({"name": "w", "steps": [{"id": "a", "task": "t", "type": step_type, "config": config}]})
    assert wf.steps[0].parsed_config() == expected


@pytest.mark.parametrize("duration", ["250ms", 250 * MILLISECOND])
def test_durations_accept_strings_and_nanoseconds_alike(duration):
    wf = decode({"name": "w", "timeout": duration, "steps": [{"id": "a", "task": "t", "timeout": duration}]})
    assert wf.timeout == wf.steps[0].timeout == 250 * MILLISECOND


@pytest.mark.parametrize(
    ("doc", "named", "where"),
    [
        ({"name": "w", "stesp": [], "steps": [{"id": "a"}]}, "`stesp`", ""),
        ({"name": "w", "trigger": [], "steps": [{"id": "a"}]}, "`trigger`", ""),
        ({"name": "w", "steps": [{"id": "a", "dependson": ["b"]}]}, "`dependson`", "$.steps[0]"),
        ({"name": "w", "steps": [{"id": "a", "loop": {}}]}, "`loop`", "$.steps[0]"),
        ({"name": "w", "steps": [{"id": "a", "retry": {"attempts": 3}}]}, "`attempts`", "$.steps[0].retry"),
        (
            {"name": "w", "default_retry": {"max_attempt": 1}, "steps": [{"id": "a"}]},
            "`max_attempt`",
            "$.default_retry",
        ),
        ({"name": "w", "priority": {"key": "k", "rule": {}}, "steps": [{"id": "a"}]}, "`rule`", "$.priority"),
    ],
)
def test_unknown_fields_are_errors_naming_the_field(doc, named, where):
    with pytest.raises(DefinitionDecodeError) as info:
        decode(doc)
    message = str(info.value)
    assert "unknown field" in message and named in message and where in message


@pytest.mark.parametrize(
    ("step_type", "config", "named"),
    [
        ("map", {"max_item": 3}, "`max_item`"),
        ("sleep", {"duration": "1s", "durtion": "2s"}, "`durtion`"),
        (
            "wait_for_event",
            {"event": "e", "match": {"left": "a", "op": "eq", "right": "input.a", "rigth": 1}},
            "`rigth`",
        ),
        ("normal", {"anything": 1}, "`anything`"),
    ],
)
def test_unknown_config_fields_are_errors_naming_the_field(step_type, config, named):
    with pytest.raises(ValueError, match="unknown field") as info:
        d.parse_config(step_type, config)
    assert named in str(info.value)


def test_a_bad_config_duration_names_the_field():
    with pytest.raises(ValueError, match="`duration`: invalid duration '3x'"):
        d.parse_config("sleep", {"duration": "3x"})


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "invalid JSON"),
        (b'{"name": "w", "steps": [{"id": "a"}]', "invalid JSON"),
        (b"[]", "Expected `object`, got `array`"),
        (b'{"steps": [{"id": "a"}]}', "missing required field `name`"),
        (b'{"name": "w"}', "missing required field `steps`"),
        (b'{"name": "w", "steps": [{"task": "a"}]}', "missing required field `id`"),
        (b'{"name": "w", "steps": [{"id": "a", "type": "bogus"}]}', "$.steps[0].type"),
        (b'{"name": "w", "steps": [{"id": "a", "timeout": "3x"}]}', "invalid duration '3x'"),
        (b'{"name": "w", "steps": [{"id": "a", "timeout": -1}]}', "must not be negative"),
        (b'{"name": "w", "steps": [{"id": "a", "timeout": 1.5}]}', "$.steps[0].timeout"),
        (b'{"name": "w", "steps": [{"id": "a", "retries": "2"}]}', "$.steps[0].retries"),
        (b'{"name": "w", "sticky": "always", "steps": [{"id": "a"}]}', "$.sticky"),
    ],
)
def test_malformed_documents_are_decode_errors(doc, fragment):
    with pytest.raises(DefinitionDecodeError) as info:
        d.decode_workflow(doc, source="pipeline.json")
    assert str(info.value).startswith("pipeline.json: ")
    assert fragment in str(info.value)


def test_the_seed_tutorial_definition_parses_with_string_durations():
    tutorial = {
        "name": "hello-pipeline",
        "version": "1.1",
        "default_retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "5s", "max_delay": "5s"},
        "steps": [
            {
                "id": "greet",
                "task": "greet",
                "depends_on": [],
                "timeout": "30s",
                "type": "normal",
                "retry": {
                    "max_attempts": 3,
                    "strategy": "exponential",
                    "initial_delay": "1s",
                    "max_delay": "30s",
                    "multiplier": 2.0,
                },
            },
            {"id": "uppercase", "task": "uppercase", "depends_on": ["greet"]},
            {"id": "reverse", "task": "reverse", "depends_on": ["uppercase"]},
        ],
    }
    wf = decode(tutorial)
    assert wf.steps[0].retry.max_delay == 30 * SECOND
    assert [s.id for s in wf.steps] == ["greet", "uppercase", "reverse"]


def test_encode_then_decode_of_the_full_definition_is_the_identity():
    wf = decode(FULL_WORKFLOW)
    assert d.decode_workflow(d.encode_workflow(wf)) == wf
    assert d.workflow_from_object(d.workflow_to_object(wf)) == wf


def test_encoding_writes_durations_as_nanoseconds():
    wf = decode({"name": "w", "steps": [{"id": "a", "task": "t", "timeout": "2s"}]})
    assert json.loads(d.encode_workflow(wf))["steps"][0]["timeout"] == 2 * SECOND


@settings(max_examples=100)
@given(dag_definitions())
def test_encode_then_decode_is_the_identity_on_random_definitions(wf):
    assert d.decode_workflow(d.encode_workflow(wf)) == wf


def test_step_lookup_by_id():
    wf = decode({"name": "w", "steps": [{"id": "a", "task": "t"}, {"id": "b", "task": "u"}]})
    assert wf.step("b").task == "u"
    assert set(wf.step_map()) == {"a", "b"}
    with pytest.raises(KeyError):
        wf.step("zz")


def test_a_document_nested_thousands_of_levels_deep_is_a_decode_error_not_a_recursion_error():
    text = '{"name": "w", "steps": [{"id": "a", "task": "t", "input": %s}]}' % ("[" * 5000 + "]" * 5000)
    for decode_text in (d.decode_workflow, d.decode_workflow_strictly):
        with pytest.raises(DefinitionDecodeError, match="may nest at most 64 levels"):
            decode_text(text, "deep.json")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"name": "w", "name": "v", "steps": [{"id": "a"}]}', 'duplicate key "name" at $'),
        (
            '{"name": "w", "steps": [{"id": "a"}, {"id": "b", "task": "t", "task": "u"}]}',
            'duplicate key "task" at $.steps[1]',
        ),
        (
            '{"name": "w", "steps": [{"id": "a", "input": {"x": {"$ref": "p", "$ref": "q"}}}]}',
            'duplicate key "$ref" at $.steps[0].input.x',
        ),
    ],
)
def test_a_key_given_twice_is_refused_naming_the_key_and_where(text, problem):
    d.decode_workflow(text)  # the plain decoder keeps the last: reading stored definitions stays cheap
    with pytest.raises(DefinitionDecodeError) as info:
        d.decode_workflow_strictly(text, "dup.json")
    assert str(info.value) == f"dup.json: {problem}"
