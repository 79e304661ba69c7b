"""required_capabilities without NATS: the set's token and subjects, which steps a worker
may take, the tasks decide hands the shell (they carry the set, so dispatch and drop agree
on the subject), and what run inspect says of a step no live worker can take."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import DropTask, EnqueueTask
from dagnats.domain.capabilities import (
    capability_routes,
    capability_set,
    capability_token,
    describe_capabilities,
    offers,
)
from dagnats.domain.decide import recover
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.durations import SECOND
from dagnats.domain.errors import InvalidIdentifier
from dagnats.domain.identifiers import is_identifier
from dagnats.infra.engine.views import awaits_capabilities, capability_waits, inspect_view
from dagnats.infra.wire.subjects import task_filter, task_subject
from dagnats.infra.wire.workers import WorkerRecord

from strategies import Recorder, at, completed, failed, started_event, timer_fired, worker_fact

NAMES = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), min_size=1, max_size=8)


def wf(*steps: StepDef, **fields) -> WorkflowDef:
    return WorkflowDef(name="wf", steps=steps, **fields)


def start(defn: WorkflowDef, data=None) -> Recorder:
    rec = Recorder()
    rec.feed(started_event(defn, data), at(0))
    return rec


# ---- the set and its token ---------------------------------------------------------------------------


def test_the_token_is_pinned_so_engines_and_workers_of_any_version_agree():
    # c + the first 16 hex digits of sha256("cuda") and of sha256("cuda,fast")
    assert capability_token(["cuda"]) == "ce636c973d999a634"
    assert capability_token(["fast", "cuda"]) == "cc12a6162a896d4bf"
    assert capability_token([]) == ""


@given(NAMES, st.randoms())
def test_order_and_repeats_do_not_change_the_token(names, rnd):
    shuffled = names * 2
    rnd.shuffle(shuffled)
    assert capability_token(shuffled) == capability_token(names)
    assert capability_set(shuffled) == tuple(sorted(set(names)))


@given(NAMES)
def test_the_token_is_one_identifier_of_17_characters(names):
    token = capability_token(names)
    assert is_identifier(token) and len(token) == 17 and token.startswith("c")


def test_different_sets_have_different_tokens():
    # "," joins the sorted names, and no identifier holds one: distinct sets, distinct text.
    sets = [["cuda"], ["cuda", "fast"], ["fast"], ["cudafast"], ["cuda-fast"], ["a", "b", "c"], ["a", "bc"]]
    assert len({capability_token(s) for s in sets}) == len(sets)


def test_a_worker_offering_a_superset_may_take_the_step():
    assert offers({"cuda", "fast", "big"}, ("cuda", "fast"))
    assert offers({"cuda"}, ("cuda",))
    assert not offers({"cuda"}, ("cuda", "fast"))
    assert not offers(set(), ("cuda",))
    assert describe_capabilities(("fast", "cuda")) == "[cuda, fast]"


# ---- subjects -----------------------------------------------------------------------------------------


def test_a_capability_task_has_a_subject_of_its_own_with_one_more_token():
    token = capability_token(["cuda", "fast"])
    assert task_subject("render", "r-1", None, ["fast", "cuda"]) == f"task.render.any.{token}.r-1"
    assert task_subject("render", "r-1", "gpu", ("cuda", "fast")) == f"task.render.g-gpu.{token}.r-1"
    assert task_filter("render", None, ["cuda", "fast"]) == f"task.render.any.{token}.*"
    assert task_filter("render", "gpu", ["cuda", "fast"]) == f"task.render.g-gpu.{token}.*"
    # Without capabilities nothing changes: 3 or 4 tokens, which no 5-token subject matches.
    assert task_subject("render", "r-1") == "task.render.r-1"
    assert task_subject("render", "r-1", "gpu", ()) == "task.render.gpu.r-1"
    assert task_filter("render") == "task.render.*"
    # A group named "any" cannot pass for the tasks of no group.
    assert task_subject("render", "r-1", "any", ["cuda"]) != task_subject("render", "r-1", None, ["cuda"])


@pytest.mark.parametrize("bad", ["", "*", ">", "a.b", "a b", "x" * 65])
def test_subjects_refuse_a_capability_that_is_not_an_identifier(bad):
    with pytest.raises(InvalidIdentifier, match="invalid capability"):
        task_subject("render", "r-1", None, ["cuda", bad])


# ---- which steps a worker consumes ------------------------------------------------------------------


def test_routes_are_the_steps_of_handled_tasks_whose_capabilities_the_worker_offers():
    defn = wf(
        StepDef(id="a", task="render", required_capabilities=("cuda",)),
        StepDef(id="b", task="render", required_capabilities=("cuda", "fast")),
        StepDef(id="c", task="render", required_capabilities=("fast", "cuda")),  # the same set as b
        StepDef(id="d", task="render", required_capabilities=("tpu",)),  # not offered
        StepDef(id="e", task="other", required_capabilities=("cuda",)),  # not handled
        StepDef(id="f", task="render"),  # no capabilities: the ordinary consumer
        StepDef(id="g", task="render", worker_group="gpu", required_capabilities=("cuda",)),
    )
    assert capability_routes(defn, ["render"], [], {"cuda", "fast"}) == {
        ("render", "", ("cuda",)),
        ("render", "", ("cuda", "fast")),
    }
    # A worker in groups takes the steps of its groups only, as it does without capabilities.
    assert capability_routes(defn, ["render"], ["gpu"], {"cuda"}) == {("render", "gpu", ("cuda",))}
    assert capability_routes(defn, ["render"], [], set()) == set()


# ---- decide -----------------------------------------------------------------------------------------------


def test_a_step_requiring_capabilities_is_enqueued_with_them():
    rec = start(wf(StepDef(id="a", task="render", required_capabilities=("cuda",)), StepDef(id="b", task="plain")))
    by_step = {t.payload.step_id: t for t in rec.enqueued}
    assert by_step["a"].capabilities == ("cuda",) and by_step["a"].group == ""
    assert by_step["b"].capabilities == ()


def test_retries_and_rebuilds_keep_the_capabilities():
    defn = wf(StepDef(id="a", task="render", required_capabilities=("cuda",), retries=2))
    rec = start(defn)
    rec.feed(failed("a", 1, "flaky", moment=at(1)), at(1))
    (retry,) = [t for t in rec.timers if t.kind == "retry"]
    rec.feed(timer_fired(retry, at(5)), at(5))
    assert [(t.payload.attempt, t.capabilities) for t in rec.enqueued] == [(1, ("cuda",)), (2, ("cuda",))]
    (reissued,) = [a for a in recover(rec.run, at(6)) if isinstance(a, EnqueueTask)]
    assert reissued.capabilities == ("cuda",)


def test_map_instances_carry_the_capabilities():
    defn = wf(
        StepDef(id="list", task="list"),
        StepDef(id="each", task="render", type="map", depends_on=("list",), required_capabilities=("cuda",)),
    )
    rec = start(defn)
    rec.feed(completed("list", 1, [1, 2], at(1)), at(1))
    assert [(t.payload.instance, t.capabilities) for t in rec.enqueued[1:]] == [(0, ("cuda",)), (1, ("cuda",))]


def test_a_timed_out_attempt_is_dropped_from_the_capability_subject():
    rec = start(wf(StepDef(id="a", task="render", timeout=30 * SECOND, required_capabilities=("cuda",))))
    rec.feed(worker_fact(ev.STEP_STARTED, "a", 1, None, at(1)), at(1))
    (timeout,) = [t for t in rec.timers if t.kind == "step_timeout"]
    actions = rec.feed(timer_fired(timeout, at(31)), at(31))
    drops = [a for a in actions if isinstance(a, DropTask)]
    assert drops and {(d.step_id, d.group, d.capabilities) for d in drops} == {("a", "", ("cuda",))}


def test_a_sticky_run_never_binds_a_step_requiring_capabilities():
    # validate refuses the combination; a definition stored without validation still routes safely.
    defn = wf(
        StepDef(id="a", task="prep"),
        StepDef(id="b", task="render", depends_on=("a",), required_capabilities=("cuda",)),
        sticky="soft",
    )
    rec = start(defn)
    rec.feed(worker_fact(ev.STEP_STARTED, "a", 1, None, at(1)), at(1))
    rec.feed(completed("a", 1, "x", at(2)), at(2))
    assert rec.run.sticky_worker == "worker-1" and rec.run.step("b").status == rs.StepStatus.QUEUED
    task = rec.enqueued[-1]
    assert (task.payload.step_id, task.group, task.capabilities) == ("b", "", ("cuda",))
    assert not [t for t in rec.timers if t.kind == "sticky_fallback"]


# ---- what run inspect says ---------------------------------------------------------------------------


def record(worker_id: str, tasks=("render",), groups=(), capabilities=()) -> WorkerRecord:
    return WorkerRecord(worker_id, list(tasks), list(groups), 1, "host", "now", list(capabilities))


def queued_run(**step_fields) -> rs.WorkflowRun:
    rec = start(wf(StepDef(id="r", task="render", required_capabilities=("fast", "cuda"), **step_fields)))
    assert rec.run.step("r").status == rs.StepStatus.QUEUED
    return rec.run


def test_a_queued_step_no_live_worker_can_take_waits_for_capabilities():
    run = queued_run()
    assert awaits_capabilities(run)
    waiting = inspect_view(run, [], [])["steps"]["r"]["waiting"]
    assert waiting == {
        "kind": "capabilities",
        "since": run.step("r").queued_at,
        "description": "no live worker of task render offers capabilities [cuda, fast]",
        "for": "a worker of task render offering capabilities [cuda, fast]: none is live",
        "capabilities": ["cuda", "fast"],
    }


@pytest.mark.parametrize(
    "workers",
    [
        [record("w-1", capabilities=["cuda"])],  # one short
        [record("w-1", capabilities=["cuda", "fast"], groups=["gpu"])],  # takes its groups' steps only
        [record("w-1", tasks=["other"], capabilities=["cuda", "fast"])],  # another task
        [record("w-old")],  # a record from before capabilities
    ],
)
def test_workers_that_cannot_take_the_step_leave_it_waiting(workers):
    assert capability_waits(queued_run(), workers).keys() == {"r"}


def test_a_live_worker_offering_a_superset_clears_the_wait():
    workers = [record("w-1"), record("w-2", capabilities=["cuda", "fast", "big-mem"])]
    assert capability_waits(queued_run(), workers) == {}
    assert "waiting" not in inspect_view(queued_run(), [], workers)["steps"]["r"]


def test_a_grouped_step_needs_a_capable_worker_of_its_group():
    run = queued_run(worker_group="gpu")
    waits = capability_waits(run, [record("w-1", capabilities=["cuda", "fast"])])
    assert waits["r"]["description"] == "no live worker of task render in group gpu offers capabilities [cuda, fast]"
    assert capability_waits(run, [record("w-2", groups=["gpu"], capabilities=["cuda", "fast"])]) == {}


def test_a_run_without_queued_capability_steps_does_not_read_the_registry():
    rec = start(
        wf(
            StepDef(id="a", task="plain"),
            StepDef(id="r", task="render", depends_on=("a",), required_capabilities=("cuda",)),
        )
    )
    assert not awaits_capabilities(rec.run)  # r is pending, not queued
    rec.feed(worker_fact(ev.STEP_STARTED, "a", 1, None, at(1)), at(1))
    rec.feed(completed("a", 1, "x", at(2)), at(2))
    assert awaits_capabilities(rec.run)


def test_queued_map_instances_wait_for_capabilities_too():
    defn = wf(
        StepDef(id="list", task="list"),
        StepDef(id="each", task="render", type="map", depends_on=("list",), required_capabilities=("cuda",)),
    )
    rec = start(defn)
    rec.feed(completed("list", 1, [1, 2], at(1)), at(1))
    assert rec.run.step("each").status == rs.StepStatus.RUNNING
    assert capability_waits(rec.run, [])["each"]["capabilities"] == ["cuda"]
