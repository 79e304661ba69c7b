"""Recorded histories must keep replaying to the state recorded beside them.

The fixtures in ``tests/histories/`` were written by ``tests/histories/record.py``
and checked by eye. If one of these tests fails, fold (or decide) changed
what an existing history means: a run stored today would be rebuilt
differently tomorrow. Fix the change, or, if it is intended, regenerate the
fixtures and review their diff.
"""

import json
from pathlib import Path

import msgspec
import pytest

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import AppendEvent
from dagnats.domain.decide import evolve
from dagnats.domain.fold import replay

HISTORIES = Path(__file__).parent / "histories"
NAMES = sorted(p.name.removesuffix(".history.json") for p in HISTORIES.glob("*.history.json"))


def load_history(name: str) -> list[ev.Event]:
    return msgspec.json.decode((HISTORIES / f"{name}.history.json").read_bytes(), type=list[ev.Event])


def load_expected(name: str) -> dict:
    return json.loads((HISTORIES / f"{name}.expected.json").read_text())


def as_json(run: rs.WorkflowRun) -> dict:
    return json.loads(rs.RUN_ENCODER.encode(run))


RECORDED = {
    "hello-pipeline",
    "retry-then-success",
    "exhausted-retries",
    # one per step type the engine runs itself, or that grows the run
    "sleep-then-remind",
    "approval-granted",
    "wait-for-payment",
    "sub-workflow-parent",
    "sub-workflow-child",
    "map-with-a-retry",
    "agent-loop",
    "planner-two-steps",
    "steps-added",
    "traced-repeated-start",
    "respond-then-audit",
}


def test_the_recorded_histories_are_all_there():
    assert set(NAMES) >= RECORDED
    for name in NAMES:
        assert (HISTORIES / f"{name}.expected.json").exists(), name


@pytest.mark.parametrize("name", NAMES)
def test_a_recorded_history_replays_to_its_recorded_state(name):
    final = replay(load_history(name))
    assert as_json(final) == load_expected(name)


@pytest.mark.parametrize("name", NAMES)
def test_the_recorded_state_survives_a_snapshot_round_trip(name):
    expected = load_expected(name)
    snapshot = rs.RUN_DECODER.decode(json.dumps(expected))
    assert snapshot == replay(load_history(name))


@pytest.mark.parametrize("name", NAMES)
def test_the_recorded_facts_still_lead_to_the_recorded_decisions(name):
    # Each fact in a history is followed by the decision events it caused;
    # feeding the facts again (at the times they were recorded) must decide the same.
    history = load_history(name)
    run, index = rs.new_run(history[0].run_id), 0
    while index < len(history):
        fact = history[index]
        run, actions = evolve(run, fact, ev.parse_timestamp(fact.timestamp))
        decisions = [a.event for a in actions if isinstance(a, AppendEvent)]
        assert history[index + 1 : index + 1 + len(decisions)] == decisions, f"after event {index} ({fact.type})"
        index += 1 + len(decisions)
    assert as_json(run) == load_expected(name)


def test_the_hello_pipeline_history_is_the_tutorial_run():
    final = replay(load_history("hello-pipeline"))
    assert final.status == rs.RunStatus.COMPLETED
    assert {sid: s.output for sid, s in final.steps.items()} == {
        "greet": "Hello, World!",
        "uppercase": "HELLO, WORLD!",
        "reverse": "!DLROW ,OLLEH",
    }
    assert final.output == "!DLROW ,OLLEH"


def test_the_exhausted_history_failed_after_three_attempts():
    final = replay(load_history("exhausted-retries"))
    assert final.status == rs.RunStatus.FAILED and final.step("charge").attempts == 3
    assert final.error == "step charge failed after 3 attempts: card declined"


# ---- the reactive.* family: a reactive execution's records fold without the workflow's code

REACTIVE = sorted(p.name.removesuffix(".reactive-history.json") for p in HISTORIES.glob("*.reactive-history.json"))


def load_reactive_records(name: str) -> list[list]:
    from dagnats.domain.reactive.events import decode_reactive_record

    records = json.loads((HISTORIES / f"{name}.reactive-history.json").read_text())
    return [decode_reactive_record(json.dumps(record).encode()) for record in records]


def test_the_recorded_reactive_histories_are_all_there():
    assert "reactive-plan-review" in REACTIVE
    for name in REACTIVE:
        assert (HISTORIES / f"{name}.reactive-expected.json").exists(), name


@pytest.mark.parametrize("name", REACTIVE)
def test_a_recorded_reactive_history_folds_to_its_recorded_execution(name):
    from dagnats.domain.reactive.fold import Execution, replay

    records = load_reactive_records(name)
    final = replay((e for r in records for e in r), Execution(records[0][0].execution_id))
    assert json.loads(json.dumps(msgspec.to_builtins(final))) == json.loads(
        (HISTORIES / f"{name}.reactive-expected.json").read_text()
    )
    # each record applied twice (a redelivered record) folds to the same execution
    twice = replay((e for r in records for e in [*r, *r]), Execution(records[0][0].execution_id))
    assert twice == final


def test_the_reactive_plan_review_inputs_still_decide_the_recorded_records():
    from reactive_support import plan_review_records

    assert plan_review_records() == load_reactive_records("reactive-plan-review")
    types = [[e.type for e in r] for r in load_reactive_records("reactive-plan-review")]
    assert types == [
        ["reactive.created", "reactive.fired"],
        ["reactive.callback", "reactive.fired"],
        ["reactive.callback", "reactive.fired", "reactive.ended"],
    ]
