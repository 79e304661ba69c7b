"""validate(): every structural rule, all problems at once, each saying where it is."""

import json

import pytest
from hypothesis import given, settings

from dagnats.domain.definition import WorkflowDef, workflow_from_object
from dagnats.domain.errors import DefinitionDecodeError, WorkflowInvalid
from dagnats.domain.validate import find_issues, parse_and_validate, validate

from strategies import dag_definitions, graph_definition, graphs

HOSTILE = ["a.b", "*", ">", "a b", "x" * 65, "", "a>b", "tab\t", "new\nline", "ünï"]


def quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def step(step_id="a", **fields):
    return {"id": step_id, "task": "work", **fields}


def doc(*steps, **fields):
    return {"name": "wf", "steps": list(steps) or [step()], **fields}


def problems(document) -> list[str]:
    wf = workflow_from_object(document)
    try:
        validate(wf)
    except WorkflowInvalid as err:
        assert err.workflow == str(wf.name)
        return err.issues
    return []


def assert_issue(document, fragment):
    found = problems(document)
    assert any(fragment in issue for issue in found), f"{fragment!r} not in {found}"


def assert_valid(document):
    assert problems(document) == []


# ---- a whole definition ----------------------------------------------------------------------------


def test_a_minimal_definition_is_valid():
    assert_valid(doc())


def test_the_hello_pipeline_tutorial_is_valid():
    assert_valid(
        doc(
            step("greet"),
            step("uppercase", depends_on=["greet"]),
            step("reverse", depends_on=["uppercase"]),
            name="hello-pipeline",
        )
    )


def test_an_invalid_definition_raises_once_with_every_problem():
    document = doc(step("a", depends_on=["ghost"]), step("b", timeout="25h"), step("a"), name="bad name")
    with pytest.raises(WorkflowInvalid) as info:
        validate(workflow_from_object(document))
    issues = info.value.issues
    assert len(issues) == 4
    assert any(i.startswith("name:") for i in issues)
    assert 'steps: duplicate step id "a"' in issues
    assert 'step "a": depends_on: unknown step "ghost"' in issues
    assert any(i.startswith('step "b": timeout:') for i in issues)
    message = str(info.value)
    assert message.startswith("invalid workflow 'bad name': ") and "ghost" in message and "25h0m0s" in message
    assert isinstance(info.value, ValueError)


def test_validate_returns_a_copy_with_aux_steps_computed():
    wf = workflow_from_object(
        doc(
            step("pay", on_failure="alert", compensate="refund"),
            step("alert"),
            step("refund"),
            step("ship"),
            aux_steps={"ship": True},
        )
    )
    valid = validate(wf)
    assert valid.aux_steps == {"alert": True, "refund": True}
    assert valid.steps == wf.steps
    assert wf.aux_steps == {"ship": True}  # the input is left alone


def test_validate_a_valid_definition_is_idempotent():
    wf = validate(workflow_from_object(doc(step("a", on_failure="h"), step("h"))))
    assert validate(wf) == wf


def test_parse_and_validate_combines_decoding_and_validation():
    wf = parse_and_validate(json.dumps(doc(step("a", compensate="b"), step("b"))), "x.json")
    assert isinstance(wf, WorkflowDef) and wf.aux_steps == {"b": True}
    with pytest.raises(DefinitionDecodeError, match="^x.json: invalid JSON"):
        parse_and_validate(b"{", "x.json")
    with pytest.raises(DefinitionDecodeError, match="unknown field `nmae`"):
        parse_and_validate(b'{"nmae": "w", "name": "w", "steps": []}', "x.json")
    with pytest.raises(WorkflowInvalid, match="at least one step"):
        parse_and_validate('{"name": "w", "steps": []}', "x.json")


# ---- identifiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_workflow_names_are_rejected(bad):
    assert_issue(doc(name=bad), f"name: {quoted(bad)} must match ^[A-Za-z0-9_-]{{1,64}}$")


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_step_ids_are_rejected(bad):
    assert_issue(doc(step(bad)), "id: ")


@pytest.mark.parametrize("bad", HOSTILE[:-5] + ["a\tb", "ünï"])
def test_hostile_task_names_are_rejected(bad):
    assert_issue(doc(step(task=bad)), f'step "a": task: {quoted(bad)} must match')


@pytest.mark.parametrize("bad", [b for b in HOSTILE if b])
def test_hostile_worker_groups_are_rejected(bad):
    assert_issue(doc(step(worker_group=bad)), 'step "a": worker_group: ')


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_event_names_are_rejected(bad):
    wait = {"event": bad, "match": {"left": "id", "op": "eq", "right": "input.id"}, "timeout": "1m"}
    assert_issue(doc(step("w", type="wait_for_event", config=wait)), 'step "w": config.event: ')
    assert_issue(doc(cancel_on=[{"event": bad}]), "cancel_on[0].event: ")


def test_an_empty_step_id_is_reported_by_position():
    assert_issue(doc(step("ok"), step("")), "steps[1]: id: ")


def test_identifiers_of_64_safe_characters_are_accepted():
    name = "A-z_0" * 12 + "abcd"
    assert len(name) == 64
    assert_valid(doc(step(name, task=name, worker_group=name), name=name))


# ---- steps and the graph ---------------------------------------------------------------------------------


def test_at_least_one_step_is_required():
    assert problems({"name": "wf", "steps": []}) == ["steps: a workflow needs at least one step"]


def test_at_most_1000_steps_are_allowed():
    assert_valid({"name": "wf", "steps": [step(f"s{i}") for i in range(1000)]})
    assert_issue(
        {"name": "wf", "steps": [step(f"s{i}") for i in range(1001)]},
        "steps: 1001 steps is more than the maximum of 1000",
    )


def test_duplicate_step_ids_are_reported_once_each():
    found = problems(doc(step("a"), step("a"), step("a"), step("b"), step("b")))
    assert found == ['steps: duplicate step id "a"', 'steps: duplicate step id "b"']


@pytest.mark.parametrize("step_type", ["normal", "agent_loop", "agent", "map", "planner"])
def test_task_is_required_for_steps_that_workers_run(step_type):
    assert_issue(
        doc(step("p"), {"id": "a", "type": step_type, "depends_on": ["p"]}),
        f'step "a": task: required for a "{step_type}" step',
    )


def test_task_is_not_required_for_steps_the_engine_runs():
    assert_valid(
        doc(
            {"id": "sub", "type": "sub_workflow", "config": {"workflow": "child"}},
            {"id": "nap", "type": "sleep", "config": {"duration": "1s"}},
            {"id": "ok", "type": "approval", "config": {"subject": "Go?", "timeout": "1h"}},
            {"id": "reply", "type": "respond"},
            {
                "id": "wait",
                "type": "wait_for_event",
                "config": {"event": "paid", "match": {"left": "id", "op": "eq", "right": "input.id"}, "timeout": "1m"},
            },
        )
    )


@pytest.mark.parametrize("field", ["depends_on", "after_any"])
def test_dependencies_must_exist(field):
    assert_issue(doc(step("a"), step("b", **{field: ["x"]})), f'step "b": {field}: unknown step "x"')


@pytest.mark.parametrize("field", ["depends_on", "after_any"])
def test_a_step_cannot_depend_on_itself(field):
    found = problems(doc(step("a", **{field: ["a"]})))
    assert found == [f'step "a": {field}: a step cannot depend on itself']


@pytest.mark.parametrize("field", ["depends_on", "after_any"])
def test_a_dependency_cannot_be_listed_twice(field):
    assert_issue(doc(step("a"), step("b", **{field: ["a", "a"]})), f'step "b": {field}: "a" is listed more than once')


def test_after_any_of_existing_steps_is_valid():
    assert_valid(doc(step("a"), step("b"), step("c", after_any=["a", "b"])))


def test_cycle_is_reported_with_its_steps():
    found = problems(doc(step("a", depends_on=["b"]), step("b", depends_on=["a"]), step("c")))
    assert found == ['steps: cycle among steps "a", "b" (1 of 3 steps are reachable)']


def test_cycle_report_includes_the_steps_stuck_behind_it():
    found = problems(
        doc(
            step("start"),
            step("a", depends_on=["start", "c"]),
            step("b", depends_on=["a"]),
            step("c", depends_on=["b"]),
            step("tail", depends_on=["c"]),
        )
    )
    assert found == ['steps: cycle among steps "a", "b", "c", "tail" (1 of 5 steps are reachable)']


def test_cycles_through_after_any_are_found():
    assert_issue(doc(step("a", after_any=["b"]), step("b", depends_on=["a"])), 'cycle among steps "a", "b"')


def dfs_has_cycle(graph: dict[str, list[tuple[str, str]]]) -> bool:
    """An independent check: depth-first search for a back edge (self-loops included)."""
    white, grey, black = 0, 1, 2
    color = {node: white for node in graph}

    def visit(node: str) -> bool:
        color[node] = grey
        for dep, _ in graph[node]:
            if color[dep] == grey or (color[dep] == white and visit(dep)):
                return True
        color[node] = black
        return False

    return any(color[n] == white and visit(n) for n in graph)


@settings(max_examples=200)
@given(graphs())
def test_random_graphs_validate_exactly_when_they_are_acyclic(graph):
    issues = find_issues(graph_definition(graph))
    assert (issues == []) == (not dfs_has_cycle(graph)), issues


@settings(max_examples=100)
@given(dag_definitions())
def test_random_dags_are_valid(wf):
    assert find_issues(wf) == []


# ---- per-type config -----------------------------------------------------------------------------------


def typed(step_type, config, **fields):
    return {"id": "x", "type": step_type, "config": config, **fields}


def test_config_that_does_not_decode_is_reported_with_step_and_field():
    assert_issue(
        doc(typed("map", {"max_itmes": 3}, task="t", depends_on=["a"]), step("a")),
        'step "x": config: unknown field `max_itmes`',
    )
    assert_issue(doc(typed("sleep", {"duration": "soon"})), 'step "x": config: `duration`: invalid duration')
    assert_issue(doc(typed("planner", {"max_steps": "5"}, task="t")), 'step "x": config: Expected `int`')


@pytest.mark.parametrize("step_type", ["normal", "agent"])
def test_config_for_a_type_that_takes_none_is_reported(step_type):
    assert_issue(
        doc(typed(step_type, {"max_items": 3}, task="t")), f'step "x": config: a "{step_type}" step takes no config'
    )
    assert_valid(doc(typed(step_type, {}, task="t")))


def test_agent_loop_needs_max_iterations():
    assert_issue(doc(typed("agent_loop", None, task="t")), 'step "x": config.max_iterations: must be greater than 0')
    assert_valid(doc(typed("agent_loop", {"max_iterations": 3, "loop_delay": "1s"}, task="t")))


def test_map_needs_exactly_one_dependency():
    assert_issue(
        doc(typed("map", None, task="t")), 'step "x": depends_on: a map step needs exactly one dependency (has 0)'
    )
    assert_issue(
        doc(step("a"), step("b"), typed("map", None, task="t", depends_on=["a", "b"])), "exactly one dependency (has 2)"
    )
    assert_valid(doc(step("a"), typed("map", None, task="t", depends_on=["a"])))


def test_map_cannot_depend_on_a_map():
    assert_issue(
        doc(
            step("a"),
            typed("map", None, task="t", depends_on=["a"]) | {"id": "m"},
            typed("map", None, task="t", depends_on=["m"]),
        ),
        'step "x": depends_on: a map step cannot depend on another map step ("m"',
    )


@pytest.mark.parametrize(("items", "ok"), [(0, False), (1, True), (10_000, True), (10_001, False)])
def test_map_max_items_is_1_to_10000(items, ok):
    document = doc(step("a"), typed("map", {"max_items": items}, task="t", depends_on=["a"]))
    if ok:
        assert_valid(document)
    else:
        assert_issue(document, f'step "x": config.max_items: must be between 1 and 10000 (got {items})')


def test_sub_workflow_needs_a_safe_workflow_name():
    assert_issue(doc(typed("sub_workflow", {})), 'step "x": config.workflow: required')
    assert_issue(doc(typed("sub_workflow", {"workflow": "a.>"})), 'step "x": config.workflow: "a.>" must match')
    assert_valid(doc(typed("sub_workflow", {"workflow": "payment-flow", "detach": True})))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "exactly one of duration, cron, until_input_path (got 0)"),
        ({"duration": "1s", "cron": "* * * * *"}, "exactly one of duration, cron, until_input_path (got 2)"),
        ({"duration": 0}, "config.duration: must be greater than 0"),
        ({"duration": "8761h"}, "config.duration: 8761h0m0s is longer than the maximum of 8760h0m0s"),
        ({"cron": "* * * *"}, 'config.cron: "* * * *": needs 5 fields (minute hour day month weekday), not 4'),
        ({"cron": "0 0 * * * *"}, "needs 5 fields (minute hour day month weekday), not 6"),
        ({"cron": "@daily"}, "needs 5 fields"),
        ({"cron": "61 * * * *"}, 'config.cron: "61 * * * *": bad minute'),
        ({"until_input_path": "wake..at"}, 'config.until_input_path: "wake..at" is not a dot path'),
        ({"until_input_path": ""}, "config.until_input_path: "),
    ],
)
def test_sleep_rules(config, fragment):
    assert_issue(doc(typed("sleep", config)), f'step "x": {fragment}' if fragment.startswith("config") else fragment)


@pytest.mark.parametrize(
    "config", [{"duration": "8760h"}, {"duration": 1}, {"cron": "*/15 0-6,22 1 * 1-5"}, {"until_input_path": "wake.at"}]
)
def test_valid_sleeps(config):
    assert_valid(doc(typed("sleep", config)))


def wait_config(**changes):
    config = {"event": "paid", "match": {"left": "order.id", "op": "eq", "right": "step.a.output.id"}, "timeout": "1h"}
    return {**config, **changes}


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (wait_config(match=None), "config.match: required"),
        (wait_config(match={"left": "", "op": "eq", "right": "input.id"}), "config.match.left: must not be empty"),
        (
            wait_config(match={"left": "id", "op": "like", "right": "input.id"}),
            'config.match.op: must be one of eq, ne, lt, lte, gt, gte (got "like")',
        ),
        (wait_config(match={"left": "a..b", "op": "gt", "right": "input.id"}), 'config.match.left: "a..b" is not'),
        (wait_config(match={"left": "id", "op": "", "right": "input.id"}), "config.match.op: "),
        (wait_config(match={"left": "id", "op": "eq", "right": ""}), "config.match.right: must not be empty"),
        (wait_config(match={"left": "id", "op": "eq", "right": "event.id"}), 'config.match.right: "event.id" must be'),
        (wait_config(match={"left": "id", "op": "eq", "right": "input"}), 'config.match.right: "input" must be'),
        (
            wait_config(match={"left": "id", "op": "eq", "right": "step.ghost.output.id"}),
            'config.match.right: unknown step "ghost"',
        ),
        (
            wait_config(match={"left": "id", "op": "eq", "right": "step.a.id"}),
            'config.match.right: "step.a.id" is malformed (expected step.<id>.output',
        ),
        (wait_config(timeout=0), "config.timeout: must be greater than 0"),
        (wait_config(event=""), 'config.event: "" must match'),
    ],
)
def test_wait_for_event_rules(config, fragment):
    assert_issue(doc(step("a"), typed("wait_for_event", config)), f'step "x": {fragment}')


@pytest.mark.parametrize("right", ["step.a.output.id", "step.a.output", "input.order.id"])
def test_valid_wait_for_event(right):
    config = wait_config(match={"left": "order.id", "op": "eq", "right": right})
    assert_valid(doc(step("a"), typed("wait_for_event", config)))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"timeout": "1h"}, "config.subject: must not be empty"),
        ({"subject": "Go?"}, "config.timeout: must be greater than 0"),
        ({"subject": "Go?", "timeout": "169h"}, "config.timeout: 169h0m0s is longer than the maximum of 168h0m0s"),
    ],
)
def test_approval_rules(config, fragment):
    assert_issue(doc(typed("approval", config)), f'step "x": {fragment}')


def test_an_approval_may_wait_168_hours():
    assert_valid(doc(typed("approval", {"subject": "Deploy?", "timeout": "168h"})))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"max_steps": 0}, "config.max_steps: must be between 1 and 100 (got 0)"),
        ({"max_steps": 101}, "config.max_steps: must be between 1 and 100 (got 101)"),
        ({"max_steps": 5, "max_depth": -1}, "config.max_depth: must be between 0 and 10 (got -1)"),
        ({"max_steps": 5, "max_depth": 11}, "config.max_depth: must be between 0 and 10 (got 11)"),
        ({"max_steps": 5, "allowed_tasks": ["ok", "not.ok"]}, 'config.allowed_tasks[1]: "not.ok" must match'),
    ],
)
def test_planner_rules(config, fragment):
    assert_issue(doc(typed("planner", config, task="plan")), f'step "x": {fragment}')


def test_a_valid_planner():
    assert_valid(doc(typed("planner", {"max_steps": 100, "max_depth": 10, "allowed_tasks": ["search"]}, task="plan")))


@pytest.mark.parametrize(("status", "ok"), [(99, False), (100, True), (200, True), (599, True), (600, False)])
def test_respond_status_is_an_http_status(status, ok):
    document = doc(typed("respond", {"status": status}))
    if ok:
        assert_valid(document)
    else:
        assert_issue(document, f'step "x": config.status: must be between 100 and 599 (got {status})')


# ---- step bounds ---------------------------------------------------------------------------------------


def test_step_timeout_is_at_most_24_hours():
    assert_valid(doc(step(timeout="24h")))
    assert_issue(
        doc(step(timeout="24h1ns")), 'step "a": timeout: 24h0m0.000000001s is longer than the maximum of 24h0m0s'
    )


@pytest.mark.parametrize(("retries", "ok"), [(-1, False), (0, True), (100_000, True), (100_001, False)])
def test_legacy_retries_are_bounded(retries, ok):
    if ok:
        assert_valid(doc(step(retries=retries)))
    else:
        assert_issue(doc(step(retries=retries)), f'step "a": retries: must be between 0 and 100000 (got {retries})')


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"max_attempts": -1}, "max_attempts: must be between 0 and 100000 (got -1)"),
        ({"max_attempts": 100_001}, "max_attempts: must be between 0 and 100000 (got 100001)"),
        ({"multiplier": -0.5}, "multiplier: must not be negative (got -0.5)"),
        (
            {"strategy": "exponential", "initial_delay": "10s", "max_delay": "5s"},
            "max_delay: 5s is shorter than initial_delay 10s",
        ),
    ],
)
def test_retry_policy_bounds(policy, fragment):
    assert_issue(doc(step(retry=policy)), f'step "a": retry.{fragment}')
    assert_issue(doc(default_retry=policy), f"default_retry.{fragment}")


@pytest.mark.parametrize(
    "policy",
    [
        {"max_attempts": 100_000},
        {"strategy": "exponential", "initial_delay": "10s"},  # no cap
        {"strategy": "exponential", "initial_delay": "1s", "max_delay": "1s", "multiplier": 3},
        {"strategy": "fixed", "initial_delay": "10s", "max_delay": "5s"},  # the cap wins, as documented
        {"strategy": "linear", "initial_delay": 0, "multiplier": 0},
    ],
)
def test_valid_retry_policies(policy):
    assert_valid(doc(step(retry=policy), default_retry=policy))


@pytest.mark.parametrize(
    ("cond", "fragment"),
    [
        ({"step_id": "a", "field": "f", "op": "~="}, 'skip_if.op: must be one of == != < > <= >= (got "~=")'),
        ({"step_id": "", "field": "f", "op": "=="}, "skip_if.step_id: must not be empty"),
        ({"step_id": "c", "field": "f", "op": "=="}, 'skip_if.step_id: "c" is not in depends_on'),
        ({"step_id": "a", "field": "", "op": "=="}, "skip_if.field: must not be empty"),
    ],
)
def test_skip_if_rules(cond, fragment):
    assert_issue(doc(step("a"), step("c"), step("b", depends_on=["a"], skip_if=cond)), f'step "b": {fragment}')


@pytest.mark.parametrize("op", ["==", "!=", "<", ">", "<=", ">="])
def test_skip_if_on_a_parent_is_valid(op):
    assert_valid(
        doc(step("a"), step("b", depends_on=["a"], skip_if={"step_id": "a", "field": "n", "op": op, "value": 1}))
    )


@pytest.mark.parametrize("field", ["on_failure", "compensate"])
def test_aux_targets_must_exist_be_another_step_and_have_no_dependencies(field):
    assert_issue(doc(step("a", **{field: "ghost"})), f'step "a": {field}: unknown step "ghost"')
    assert_issue(doc(step("a", **{field: "a"})), f'step "a": {field}: a step cannot be its own {field} step')
    assert_issue(
        doc(step("a", **{field: "h"}), step("h", depends_on=["a"])),
        f'step "a": {field}: target "h" must not have depends_on or after_any',
    )
    assert_issue(
        doc(step("z"), step("a", **{field: "h"}), step("h", after_any=["z"])),
        f'step "a": {field}: target "h" must not have depends_on or after_any',
    )
    assert_valid(doc(step("a", **{field: "h"}), step("h")))


@pytest.mark.parametrize("field", ["on_failure", "compensate"])
@pytest.mark.parametrize("dependency", ["depends_on", "after_any"])
def test_no_step_may_wait_for_an_aux_step_which_might_never_run(field, dependency):
    assert_issue(
        doc(step("a", **{field: "h"}), step("h"), step("c", **{dependency: ["h"]})),
        f'step "c": {dependency}: "h" is an on_failure/compensate step, which runs only when triggered',
    )


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"rate_limit": {"limit": 0, "period": "1s"}}, "rate_limit.limit: must be greater than 0 (got 0)"),
        ({"rate_limit": {"limit": -3, "period": "1s"}}, "rate_limit.limit: must be greater than 0 (got -3)"),
        (
            {"rate_limit": {"limit": 5001, "period": "1s"}},
            "rate_limit.limit: 5001 is more than the maximum of 5000 per period",
        ),
        ({"rate_limit": {"limit": 1, "period": 0}}, "rate_limit.period: must be greater than 0 (got 0)"),
        (
            {"keyed_rate_limit": {"key": "a..b", "limit": 1, "period": "1s"}},
            'keyed_rate_limit.key: "a..b" is not a dot path',
        ),
        (
            {"keyed_rate_limit": {"key": "order id", "limit": 1, "period": "1s"}},
            'keyed_rate_limit.key: "order id" is not a dot path such as "data.user.id"',
        ),
        ({"keyed_rate_limit": {"key": "", "limit": 1, "period": "1s"}}, "keyed_rate_limit.key: "),
        (
            {"keyed_rate_limit": {"key": "u", "limit": 6000, "period": "1s", "units": 10}},
            "keyed_rate_limit.limit: 6000 is more than the maximum of 5000 per period",
        ),
        (
            {"keyed_rate_limit": {"key": "u", "limit": 0, "period": "1s"}},
            "keyed_rate_limit.limit: must be greater than 0",
        ),
        (
            {"keyed_rate_limit": {"key": "u", "limit": 1, "period": 0}},
            "keyed_rate_limit.period: must be greater than 0",
        ),
        (
            {"keyed_rate_limit": {"key": "u", "limit": 5, "period": "1s", "units": 0}},
            "keyed_rate_limit.units: must be between 1 and 5 (got 0)",
        ),
        (
            {"keyed_rate_limit": {"key": "u", "limit": 5, "period": "1s", "units": 6}},
            "keyed_rate_limit.units: must be between 1 and 5 (got 6)",
        ),
        (
            {"rate_limit": {"limit": 1, "period": "1s"}, "keyed_rate_limit": {"key": "u", "limit": 1, "period": "1s"}},
            "rate_limit: cannot be combined with keyed_rate_limit",
        ),
        ({"max_task_concurrency": -1}, "max_task_concurrency: must be between 0 and 1000 (got -1)"),
        ({"max_task_concurrency": 1001}, "max_task_concurrency: must be between 0 and 1000 (got 1001)"),
    ],
)
def test_flow_control_rules(fields, fragment):
    assert_issue(doc(step(**fields)), f'step "a": {fragment}')


def test_valid_flow_control():
    assert_valid(
        doc(
            step("a", rate_limit={"limit": 10, "period": "1s"}, max_task_concurrency=1000),
            step("b", keyed_rate_limit={"key": "user.id", "limit": 5, "period": "1m", "units": 5}),
            step("c", rate_limit={"limit": 5000, "period": "1h"}, singleton=True),
            step("m", type="map", depends_on=["a"], keyed_rate_limit={"key": "0", "limit": 1, "period": "1s"}),
            concurrency={"max_runs": 10_000, "max_steps": 2},
        )
    )


ENGINE_RUN_STEPS = {
    "sleep": {"config": {"duration": "1s"}},
    "approval": {"config": {"subject": "approvals.x", "timeout": "1h"}},
    "wait_for_event": {
        "config": {"event": "e", "timeout": "1h", "match": {"left": "id", "op": "eq", "right": "input.id"}}
    },
    "sub_workflow": {"config": {"workflow": "child"}},
}


@pytest.mark.parametrize("step_type", sorted(ENGINE_RUN_STEPS))
@pytest.mark.parametrize(
    "limit",
    [
        {"rate_limit": {"limit": 1, "period": "1s"}},
        {"keyed_rate_limit": {"key": "u", "limit": 1, "period": "1s"}},
        {"max_task_concurrency": 2},
        {"singleton": True},
    ],
    ids=lambda limit: next(iter(limit)),
)
def test_a_limit_on_a_step_the_engine_runs_is_refused_it_would_never_hold_anything(step_type, limit):
    fields = {"type": step_type, "task": "", **ENGINE_RUN_STEPS[step_type], **limit}
    assert problems(doc(step("x", **fields))) == [
        f'step "x": {next(iter(limit))}: a "{step_type}" step runs in the engine, not on a worker: no task to limit'
    ]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"rate_limit": {"limit": 1, "period": "soon"}}, "`period`: invalid duration 'soon'"),
        ({"rate_limit": {"limit": 1, "period": -1}}, "`period`: invalid duration -1: must not be negative"),
        ({"rate_limit": {"limit": "5", "period": "1s"}}, "Expected `int`, got `str` - at `$.steps[0].rate_limit.limit"),
        ({"rate_limit": {"period": "1s"}}, "Object missing required field `limit` - at `$.steps[0].rate_limit`"),
        ({"keyed_rate_limit": {"limit": 1, "period": "1s"}}, "missing required field `key`"),
        ({"max_task_concurrency": "4"}, "Expected `int`, got `str` - at `$.steps[0].max_task_concurrency`"),
        ({"singleton": "yes"}, "Expected `bool`, got `str` - at `$.steps[0].singleton`"),
        ({"required_capabilities": "cuda"}, "Expected `array`, got `str` - at `$.steps[0].required_capabilities`"),
    ],
)
def test_flow_control_fields_of_the_wrong_shape_are_refused_when_decoded(fields, fragment):
    with pytest.raises(DefinitionDecodeError) as info:
        workflow_from_object(doc(step(**fields)))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"priority": "high"}, "Expected `object | null`, got `str` - at `$.priority`"),
        ({"priority": {"key": "tier", "rules": ["gold"]}}, "Expected `object`, got `array` - at `$.priority.rules`"),
        ({"priority": {"key": "tier", "rules": {"gold": 1.5}}}, "Expected `int`, got `float` - at `$.priority.rules"),
        ({"priority": {"rules": {"gold": 1}}}, "Object missing required field `key` - at `$.priority`"),
        ({"concurrency": {"max_runs": "2"}}, "Expected `int`, got `str` - at `$.concurrency.max_runs`"),
    ],
)
def test_priority_and_concurrency_of_the_wrong_shape_are_refused_when_decoded(fields, fragment):
    with pytest.raises(DefinitionDecodeError) as info:
        workflow_from_object(doc(**fields))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ({"$ref": "c"}, 'input.$ref: step "c" is not in depends_on or after_any'),
        ({"x": [1, {"$ref": "c.out"}]}, 'input.x[1].$ref: step "c" is not in depends_on or after_any'),
        ([{"deep": {"$ref": "zz"}}], 'input[0].deep.$ref: step "zz" is not in depends_on or after_any'),
        ({"$ref": "a..x"}, 'input.$ref: "a..x" is not "<step-id>" or "<step-id>.<dot.path>"'),
        ({"$ref": ""}, "input.$ref: "),
        ({"$ref": 5}, 'input.$ref: 5 is not "<step-id>"'),
        ({"$ref": "a", "fallback": 1}, 'input: a $ref object takes only "$ref" and "default" (got "fallback")'),
    ],
)
def test_input_template_refs_must_name_a_dependency(template, fragment):
    assert_issue(
        doc(step("a"), step("b"), step("c"), step("t", depends_on=["a"], after_any=["b"], input=template)),
        f'step "t": {fragment}',
    )


def test_valid_input_templates():
    template = {
        "user": {"$ref": "a.user.id", "default": {"$ref": "not-a-ref-inside-a-default"}},
        "all": [{"$ref": "b"}, "literal", 3],
        "plain": {"nested": True},
    }
    assert_valid(doc(step("a"), step("b"), step("t", depends_on=["a"], after_any=["b"], input=template)))
    assert_valid(doc(step("t", input="just a constant")))


# ---- workflow-level rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"concurrency": {"max_runs": -1}}, "concurrency.max_runs: must not be negative (got -1)"),
        (
            {"concurrency": {"max_runs": 10_001}},
            "concurrency.max_runs: 10001 is more than the maximum of 10000 runs at once",
        ),
        ({"concurrency": {"max_steps": -1}}, "concurrency.max_steps: must be between 0 and 1000 (got -1)"),
        ({"concurrency": {"max_steps": 1001}}, "concurrency.max_steps: must be between 0 and 1000 (got 1001)"),
        ({"idempotency_key": ".order"}, 'idempotency_key: ".order" is not a dot path'),
        ({"idempotency_key": "order."}, 'idempotency_key: "order." is not a dot path'),
        ({"sticky": "hard"}, 'sticky: "hard" needs a workflow timeout'),
        ({"priority": {"key": "", "rules": {"a": 1}}}, 'priority.key: "" is not a dot path'),
        ({"priority": {"key": "a b", "rules": {"a": 1}}}, 'priority.key: "a b" is not a dot path'),
        ({"priority": {"key": "a..b", "rules": {"a": 1}}}, 'priority.key: "a..b" is not a dot path'),
        ({"priority": {"key": "tier", "rules": {"free": -601}}}, 'priority.rules["free"]: must be between -600'),
        ({"priority": {"key": "tier"}}, "priority.rules: needs 1 to 20 rules (got 0)"),
        (
            {"priority": {"key": "tier", "rules": {str(i): 0 for i in range(21)}}},
            "priority.rules: needs 1 to 20 rules (got 21)",
        ),
        ({"priority": {"key": "tier", "rules": {"gold": 601}}}, 'priority.rules["gold"]: must be between -600 and 600'),
        (
            {"priority": {"key": "tier", "rules": {"gold": 1}, "default_offset": -601}},
            "priority.default_offset: must be between -600 and 600 (got -601)",
        ),
        ({"cancel_on": [{"event": f"e{i}"} for i in range(6)]}, "cancel_on: 6 entries is more than the maximum of 5"),
        (
            {"cancel_on": [{"event": "e", "match": {"left": "id", "op": "ne", "right": "input.id"}}]},
            'cancel_on[0].match.op: must be "eq" (got "ne")',
        ),
        (
            {"cancel_on": [{"event": "e", "match": {"left": "", "op": "eq", "right": "input.id"}}]},
            "cancel_on[0].match.left: must not be empty",
        ),
        (
            {"cancel_on": [{"event": "e", "match": {"left": "id", "op": "eq", "right": ""}}]},
            "cancel_on[0].match.right: must not be empty",
        ),
        ({"singleton": {"mode": "skip", "key": "a b"}}, 'singleton.key: "a b" is not a dot path'),
        ({"max_step_error_bytes": 0}, "max_step_error_bytes: must be between 1 and 1048576 (got 0)"),
        ({"max_step_error_bytes": 1_048_577}, "max_step_error_bytes: must be between 1 and 1048576"),
        ({"input_schema": {"type": "objekt"}}, "input_schema: not a valid JSON Schema: "),
        ({"output_schema": {"properties": {"a": {"minLength": -1}}}}, "output_schema: not a valid JSON Schema: "),
        (
            {"input_schema": {"required": "name"}},
            "input_schema: not a valid JSON Schema: 'name' is not of type 'array'",
        ),
    ],
)
def test_workflow_level_rules(fields, fragment):
    assert_issue(doc(**fields), fragment)


def test_the_workflow_timeout_is_at_most_365_days():
    assert_valid(doc(timeout="8760h"))
    assert_issue(doc(timeout="8760h1s"), "timeout: 8760h0m1s is longer than the maximum of 8760h0m0s")
    assert_issue(doc(timeout=2**63 - 1), "is longer than the maximum of 8760h0m0s")


def test_sticky_cannot_be_combined_with_a_worker_group():
    assert_issue(
        doc(step("a", worker_group="gpu"), step("b"), sticky="soft"),
        'sticky: cannot be combined with a step worker_group (set on "a")',
    )


def test_sticky_cannot_be_combined_with_required_capabilities():
    assert_issue(
        doc(step("a"), step("b", required_capabilities=["cuda"]), sticky="soft"),
        'sticky: cannot be combined with step required_capabilities (set on "b")',
    )


# ---- required_capabilities -------------------------------------------------------------------------------


def test_required_capabilities_that_are_identifiers_are_valid():
    assert_valid(doc(step("a", required_capabilities=["cuda", "fast-disk", "x" * 64])))
    assert_valid(doc(step("m", type="map", depends_on=["a"], required_capabilities=["cuda"]), step("a")))


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_capability_names_are_refused_naming_the_step_and_the_name(bad):
    issues = problems(doc(step("render", required_capabilities=["cuda", bad])))
    assert issues == [
        f'step "render": required_capabilities[1]: {quoted(bad)} must match ^[A-Za-z0-9_-]{{1,64}}$ '
        "(letters, digits, '_' and '-'; no '.', '*', '>' or spaces)"
    ]
    assert "\n" not in str(WorkflowInvalid("wf", issues))


def test_a_capability_listed_twice_is_refused():
    assert_issue(
        doc(step(required_capabilities=["cuda", "cuda"])),
        'step "a": required_capabilities: "cuda" is listed more than once',
    )


def test_at_most_32_capabilities_per_step():
    assert_valid(doc(step(required_capabilities=[f"c{i}" for i in range(32)])))
    assert_issue(
        doc(step(required_capabilities=[f"c{i}" for i in range(33)])),
        "required_capabilities: 33 capabilities is more than the maximum of 32",
    )


def test_required_capabilities_on_a_step_the_engine_runs_are_refused():
    assert_issue(
        doc(step("nap", type="sleep", task="", config={"duration": "1s"}, required_capabilities=["cuda"])),
        'step "nap": required_capabilities: a "sleep" step runs in the engine, not on a worker',
    )


def test_a_fully_loaded_valid_workflow():
    assert_valid(
        doc(
            step("a"),
            concurrency={"max_runs": 5, "max_steps": 1000},
            timeout="1h",
            idempotency_key="order.id",
            sticky="hard",
            priority={"key": "tier", "rules": {"gold": -600, "free": 600}, "default_offset": 0},
            cancel_on=[{"event": f"e{i}", "match": {"left": "id", "op": "eq", "right": "input.id"}} for i in range(5)],
            singleton={"mode": "cancel", "key": "user.id"},
            max_step_error_bytes=1_048_576,
            input_schema={
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}},
            },
            output_schema={"type": "string"},
        )
    )


def test_negative_durations_are_refused_before_validation():
    # Decoding turns every duration into nanoseconds >= 0, so validate only checks upper bounds.
    with pytest.raises(DefinitionDecodeError, match="must not be negative"):
        workflow_from_object(doc(timeout=-1))


# ---- free-form values: depth and numbers ----------------------------------------------------------------


def nested(levels: int):
    value = "x"
    for _ in range(levels):
        value = [value]
    return value


def test_a_value_nested_64_levels_deep_is_accepted():
    assert_valid(doc(step("a", input=nested(64))))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"input": nested(65)}, 'step "a": input: nested deeper than 64 levels'),
        ({"input": {"deep": nested(5000)}}, 'step "a": input: nested deeper than 64 levels (at $.deep[0]'),
        ({"type": "sleep", "config": {"duration": "1s", "extra": nested(65)}}, 'step "a": config: nested deeper'),
        ({"input": [1, float("nan")]}, 'step "a": input: nan is not a JSON number (at $[1])'),
    ],
)
def test_step_values_nested_too_deeply_or_holding_nan_are_refused_naming_the_step(fields, fragment):
    assert_issue(doc(step("a", **fields)), fragment)


def test_a_skip_if_value_or_a_schema_nested_too_deeply_is_refused():
    condition = {"step_id": "p", "field": "f", "op": "==", "value": nested(65)}
    assert_issue(
        doc(step("p"), step("a", depends_on=["p"], skip_if=condition)),
        'step "a": skip_if.value: nested deeper than 64 levels',
    )
    # jsonschema's own check of a schema recurses per level: 5,000 would exhaust the stack.
    assert_issue(doc(input_schema={"items": nested(5000)}), "input_schema: nested deeper than 64 levels")


def test_a_definition_document_nested_5000_levels_deep_is_one_decode_error_naming_the_step():
    text = '{"name": "wf", "steps": [{"id": "a", "task": "t", "input": %s}]}' % ("[" * 5000 + "]" * 5000)
    with pytest.raises(DefinitionDecodeError) as info:
        parse_and_validate(text, "deep.json")
    message = str(info.value)
    assert message.startswith("deep.json: $.steps[0].input[0][0]")
    assert "nested too deeply (a value in a definition may nest at most 64 levels)" in message
    assert len(message) < 200
