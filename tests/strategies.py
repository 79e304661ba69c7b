"""Hypothesis strategies for the domain: definitions, graphs and run histories.

``recorded_runs`` drives ``decide.evolve`` the way a RunActor would: each
drawn fact is a plausible report from outside the run's owner (a worker's
step.started/completed/failed, a fired timer, a re-sent duplicate, a stale
report from an earlier attempt), and the recorded history is every fact
followed by the decision events it caused, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import msgspec
from hypothesis import strategies as st

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import Action, AppendEvent, EnqueueTask, StartTimer
from dagnats.domain.decide import evolve
from dagnats.domain.definition import ConcurrencyLimit, RateLimit, RetryPolicy, StepDef, WorkflowDef
from dagnats.domain.durations import SECOND
from dagnats.domain.limits import SLOTS, step_limits

RUN_ID = "0123456789abcdef0123456789abcdef"
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)

task_names = st.sampled_from(["greet", "fetch", "upper", "store"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

retry_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(0, 3),
    strategy=st.sampled_from(["fixed", "linear", "exponential"]),
    initial_delay=st.integers(0, 5).map(lambda n: n * SECOND),
    max_delay=st.sampled_from([0, 10 * SECOND]),
    multiplier=st.sampled_from([0.0, 1.5, 2.0]),
)


@cache
def _index(size: int) -> st.SearchStrategy[int]:
    """An index into a list of ``size`` items (strategies are cached: building them is costly)."""
    return st.integers(0, size - 1)


@cache
def _earlier_steps(index: int) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([f"s{i}" for i in range(index)]), unique=True, max_size=3)


_maybe_retry = st.none() | retry_policies
_legacy_retries = st.sampled_from([0, 0, 1])


@st.composite
def dag_definitions(
    draw: st.DrawFn, max_steps: int = 6, timeouts: tuple[int, ...] = (0, 0, 30 * SECOND)
) -> WorkflowDef:
    """A valid definition of normal steps, acyclic by construction (each step depends only on earlier ones)."""
    count = draw(st.integers(1, max_steps))
    timeout = st.sampled_from(timeouts)
    steps = []
    for index in range(count):
        deps = draw(_earlier_steps(index)) if index else []
        steps.append(
            StepDef(
                id=f"s{index}",
                task=draw(task_names),
                depends_on=tuple(sorted(deps)),
                timeout=draw(timeout),
                retry=draw(_maybe_retry),
                retries=draw(_legacy_retries),
            )
        )
    return WorkflowDef(name="random-dag", steps=tuple(steps), default_retry=draw(_maybe_retry))


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 7) -> dict[str, list[tuple[str, str]]]:
    """A possibly-cyclic graph: node -> [(dependency, "depends_on" | "after_any")]."""
    count = draw(st.integers(1, max_nodes))
    nodes = [f"n{i}" for i in range(count)]
    graph: dict[str, list[tuple[str, str]]] = {}
    for node in nodes:
        deps = draw(st.lists(st.sampled_from(nodes), unique=True, max_size=3))
        graph[node] = [(dep, draw(st.sampled_from(["depends_on", "after_any"]))) for dep in deps]
    return graph


def graph_definition(graph: dict[str, list[tuple[str, str]]]) -> WorkflowDef:
    steps = tuple(
        StepDef(
            id=node,
            task="work",
            depends_on=tuple(d for d, kind in deps if kind == "depends_on"),
            after_any=tuple(d for d, kind in deps if kind == "after_any"),
        )
        for node, deps in graph.items()
    )
    return WorkflowDef(name="graph", steps=steps)


# ---- events ----------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return BASE_TIME + timedelta(seconds=seconds)


def started_event(wf: WorkflowDef, data: Any = None, run_id: str = RUN_ID) -> ev.Event:
    return ev.make_event(
        type=ev.WORKFLOW_STARTED,
        run_id=run_id,
        timestamp=ev.format_timestamp(BASE_TIME),
        payload={"workflow_def": msgspec.to_builtins(wf), "input": data},
        id=ev.WORKFLOW_STARTED,
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def worker_fact(
    event_type: str, step_id: str, attempt: int, payload: Any = None, moment: datetime = BASE_TIME, run_id: str = RUN_ID
) -> ev.Event:
    return ev.make_event(
        type=event_type,
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        payload=payload,
        timestamp=ev.format_timestamp(moment),
        worker_id="worker-1",
        id=ev.fact_id(event_type, step_id, attempt),
    )


def completed(step_id: str, attempt: int, output: Any = None, moment: datetime = BASE_TIME) -> ev.Event:
    return worker_fact(ev.STEP_COMPLETED, step_id, attempt, output, moment)


def failed(
    step_id: str,
    attempt: int,
    error: str = "boom",
    failure_type: str = "transient",
    moment: datetime = BASE_TIME,
    **extra: Any,
) -> ev.Event:
    payload = {"error": error, "failure_type": failure_type, **extra}
    return worker_fact(ev.STEP_FAILED, step_id, attempt, payload, moment)


def timer_fired(timer: StartTimer, moment: datetime = BASE_TIME, run_id: str = RUN_ID) -> ev.Event:
    return ev.make_event(
        type=ev.TIMER_FIRED,
        run_id=run_id,
        step_id=timer.step_id,
        timestamp=ev.format_timestamp(moment),
        payload={
            "timer_id": timer.timer_id,
            "kind": timer.kind,
            "step_id": timer.step_id,
            "attempt": timer.attempt,
            "instance": timer.instance,
        },
        id=f"timer.{timer.timer_id}",
    )


def _answer(cls: type[ev.EventBase], step_id: str, attempt: int, payload: Any, t: float, instance: int | None) -> Any:
    tag: str = cls.__struct_config__.tag  # type: ignore[assignment]
    return cls(
        run_id=RUN_ID,
        step_id=step_id,
        attempt=attempt,
        instance=instance,
        timestamp=ev.format_timestamp(at(t)),
        payload=payload,
        id=ev.fact_id(tag, step_id, attempt, instance),
    )


def admitted(step_id: str, attempt: int, *holds: str, t: float = 1, instance: int | None = None) -> ev.StepAdmitted:
    """Flow control's answer: the attempt is admitted, holding the slots of ``holds``."""
    return _answer(ev.StepAdmitted, step_id, attempt, ev.Admission(holds=holds), t, instance)


def limited(
    step_id: str,
    attempt: int,
    key: str,
    until: float,
    position: int = 0,
    t: float = 1,
    instance: int | None = None,
    holds: tuple[str, ...] = (),
) -> ev.StepLimited:
    """Flow control's answer: not yet, ask again at ``until`` (seconds after BASE_TIME); the
    attempt holds the slots of ``holds`` meanwhile (another limit, a rate, says wait)."""
    until_at = ev.format_timestamp(at(until))
    payload = ev.Limited(key=key, reason="busy", until=until_at, position=position, holds=holds)
    return _answer(ev.StepLimited, step_id, attempt, payload, t, instance)


def run_admitted(*holds: str, t: float = 1) -> ev.RunAdmitted:
    return _answer(ev.RunAdmitted, "", 0, ev.Admission(holds=holds), t, None)


def run_limited(key: str, until: float, position: int = 0, t: float = 1) -> ev.RunLimited:
    payload = ev.Limited(key=key, reason="busy", until=ev.format_timestamp(at(until)), position=position)
    return _answer(ev.RunLimited, "", 0, payload, t, None)


def cancelled(t: float) -> ev.WorkflowCancelled:
    return ev.WorkflowCancelled(
        run_id=RUN_ID, timestamp=ev.format_timestamp(at(t)), id="cancel.x", payload=ev.RunEnd(reason="user")
    )


# ---- driving a run -------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Feeds facts through ``evolve`` and keeps what a RunActor would keep."""

    run: rs.WorkflowRun = field(default_factory=lambda: rs.new_run(RUN_ID))
    facts: list[ev.Event] = field(default_factory=list)
    history: list[ev.Event] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    timers: list[StartTimer] = field(default_factory=list)
    moments: list[datetime] = field(default_factory=list)

    def feed(self, fact: ev.Event, now: datetime) -> list[Action]:
        self.run, actions = evolve(self.run, fact, now)
        self.facts.append(fact)
        self.moments.append(now)
        self.history.append(fact)
        self.history += [a.event for a in actions if isinstance(a, AppendEvent)]
        self.timers += [a for a in actions if isinstance(a, StartTimer)]
        self.actions += actions
        return actions

    @property
    def enqueued(self) -> list[EnqueueTask]:
        return [a for a in self.actions if isinstance(a, EnqueueTask)]


def candidate_facts(rec: Recorder, moment: datetime) -> dict[str, list[ev.Event]]:
    """What could plausibly arrive next, valid or not, by kind, in a deterministic order."""
    run = rec.run
    kinds: dict[str, list[ev.Event]] = {k: [] for k in ("progress", "failure", "timer", "stale", "duplicate")}
    if run.definition is None:
        return kinds
    for step in run.definition.steps:
        state = run.step(step.id)
        n = state.attempts
        if state.status in rs.IN_FLIGHT_STEP_STATUSES:
            kinds["progress"].append(worker_fact(ev.STEP_STARTED, step.id, n, None, moment))
            kinds["progress"].append(completed(step.id, n, {"step": step.id, "attempt": n}, moment))
            kinds["failure"].append(failed(step.id, n, f"{step.id} broke", "transient", moment))
            kinds["failure"].append(failed(step.id, n, f"{step.id} broke for good", "permanent", moment))
            kinds["failure"].append(failed(step.id, n, "slow down", "rate_limited", moment, retry_after_ms=250))
        if n > 1:  # a late report from an earlier attempt
            kinds["stale"].append(completed(step.id, n - 1, {"stale": True}, moment))
            kinds["stale"].append(failed(step.id, n - 1, "stale failure", "transient", moment))
    kinds["timer"] = [timer_fired(t, moment) for t in rec.timers]
    kinds["duplicate"] = rec.facts[-6:]  # re-sent reports
    return kinds


# How often each kind of fact is drawn, relative to the others.
KIND_WEIGHTS = ["progress"] * 5 + ["failure", "timer", "timer", "stale", "duplicate"]


@dataclass
class RecordedRun:
    definition: WorkflowDef
    facts: list[ev.Event]
    history: list[ev.Event]
    final: rs.WorkflowRun
    enqueued: list[EnqueueTask]
    moments: list[datetime]


@st.composite
def recorded_runs(
    draw: st.DrawFn, definitions: st.SearchStrategy[WorkflowDef] = dag_definitions(), max_facts: int = 30
) -> RecordedRun:
    """A run driven by a random sequence of plausible facts (see the module docstring)."""
    wf = draw(definitions)
    rec = Recorder()
    rec.feed(started_event(wf, draw(json_values)), BASE_TIME)
    for tick in range(1, draw(st.integers(0, max_facts)) + 1):
        moment = at(tick)
        candidates = candidate_facts(rec, moment)
        kinds = [k for k in KIND_WEIGHTS if candidates[k]]
        if not kinds:
            break
        chosen = candidates[kinds[draw(_index(len(kinds)))]]
        rec.feed(chosen[draw(_index(len(chosen)))], moment)
    return RecordedRun(wf, rec.facts, rec.history, rec.run, rec.enqueued, rec.moments)


_OTHER_DEFINITION = WorkflowDef(name="other", steps=(StepDef(id="x", task="t"),))
_FAILURES = (
    st.none()
    | st.text(max_size=8)
    | st.builds(
        ev.Failure,
        error=st.text(max_size=8),
        failure_type=st.sampled_from(["transient", "permanent", "rate_limited", "?"]),
        retry_after_ms=json_values,
        timeout=st.booleans(),
    )
)


def _payloads(event_type: str) -> st.SearchStrategy[Any]:
    """Payloads of any shape the event type's struct accepts (None: its default)."""
    if event_type in (ev.STEP_COMPLETED, ev.STEP_CONTINUE):
        return json_values
    if event_type == ev.STEP_FAILED:
        return _FAILURES
    if event_type == ev.WORKFLOW_STARTED:
        return st.none() | st.just(ev.RunStart(workflow_def=_OTHER_DEFINITION, input=1))
    if event_type == ev.STEP_QUEUED:
        return st.none() | st.builds(
            ev.Queued,
            task=task_names,
            input=json_values,
            input_from=st.sampled_from(["", "wiring", "previous", "on_failure", "?"]),
        )
    if event_type == ev.WORKFLOW_START_REPEATED:
        callers = st.sampled_from(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "not-a-traceparent"])
        return st.none() | st.builds(ev.RepeatedStart, caller=callers)
    if event_type == ev.TIMER_FIRED:
        return st.none() | st.builds(
            ev.TimerFire,
            timer_id=st.text(max_size=8),
            kind=st.text(max_size=8),
            step_id=st.sampled_from(["s0", "s1", ""]),
            attempt=st.integers(0, 5),
        )
    return st.none()


@st.composite
def _stray(draw: st.DrawFn, step_names: tuple[str, ...]) -> ev.Event:
    event_type = draw(st.sampled_from(sorted(ev.EVENT_TYPES)))
    return ev.make_event(
        event_type,
        RUN_ID,
        draw(_payloads(event_type)),
        step_id=draw(st.sampled_from(step_names + ("", "nope"))),
        timestamp=ev.format_timestamp(at(999)),
        attempt=draw(st.integers(0, 5)),
    )


@cache
def stray_events(step_names: tuple[str, ...]) -> st.SearchStrategy[ev.Event]:
    """Any event at all about this run: worker facts, decisions, run events, odd payloads."""
    return _stray(step_names)


# ---- flow control ------------------------------------------------------------------------------

_STEP_LIMITS = st.sampled_from(
    [
        {},
        {"max_task_concurrency": 1},
        {"singleton": True},
        {"rate_limit": RateLimit(limit=2, period=SECOND)},
        {"max_task_concurrency": 2, "singleton": True},
        {"rate_limit": RateLimit(limit=1, period=SECOND), "max_task_concurrency": 1},
    ]
)
_RUN_LIMITS = st.sampled_from(
    [None, ConcurrencyLimit(max_steps=1), ConcurrencyLimit(max_runs=2), ConcurrencyLimit(max_runs=1, max_steps=2)]
)


@st.composite
def limited_definitions(draw: st.DrawFn) -> WorkflowDef:
    """A random DAG whose steps (and the run) are under random limits."""
    base = draw(dag_definitions(max_steps=4))
    steps = tuple(msgspec.structs.replace(step, **draw(_STEP_LIMITS)) for step in base.steps)
    return msgspec.structs.replace(base, steps=steps, concurrency=draw(_RUN_LIMITS))


def admission_facts(rec: Recorder, t: float) -> list[ev.Event]:
    """Flow control's possible answers to what the run waits on: admitted or limited."""
    run, facts = rec.run, []
    if run.definition is None:
        return []
    if run.status == rs.RunStatus.PENDING:
        key = f"runs.{run.definition.name}"
        facts += [run_admitted(key, t=t), run_limited(key, until=t + 3, position=1, t=t)]
    for step in run.definition.steps:
        state = run.step(step.id)
        if state.status != rs.StepStatus.WAITING or state.admitted:
            continue
        slots = tuple(r.key for r in step_limits(run.definition, step, state.input, 0) if r.kind == SLOTS)
        attempt, rate = state.attempts + 1, f"rate.{step.task}"
        facts.append(admitted(step.id, attempt, *slots, t=t))
        if state.holds:  # its slots granted, a rate said wait: it keeps them while it waits again
            facts.append(limited(step.id, attempt, rate, until=t + 2, t=t, holds=state.holds))
            continue
        facts.append(limited(step.id, attempt, slots[0] if slots else rate, until=t + 3, position=1, t=t))
        if slots and step.rate_limit is not None:
            facts.append(limited(step.id, attempt, rate, until=t + 2, t=t, holds=slots))
    return facts


@dataclass
class AdmittedRun:
    """A limited run: each fact fed, the state it led to and the actions it asked for."""

    definition: WorkflowDef
    facts: list[ev.Event]
    history: list[ev.Event] = field(repr=False)
    steps: list[tuple[ev.Event, rs.WorkflowRun, rs.WorkflowRun, list[Action]]] = field(repr=False)
    final: rs.WorkflowRun = field(repr=False)


ADMISSION_WEIGHTS = ["progress"] * 4 + ["admission"] * 4 + ["failure", "timer", "timer", "stale", "duplicate", "end"]


@st.composite
def admitted_runs(draw: st.DrawFn, max_facts: int = 30) -> AdmittedRun:
    """A run under limits driven by random worker facts, admission answers, timers, duplicates
    and (rarely) a cancel, the way ``recorded_runs`` drives an unlimited one."""
    wf = draw(limited_definitions())
    rec = Recorder()
    steps = []
    fact = started_event(wf, draw(json_values))
    for tick in range(draw(st.integers(0, max_facts)) + 1):
        if tick:
            candidates = candidate_facts(rec, at(tick))
            candidates["admission"] = admission_facts(rec, tick)
            candidates["end"] = [] if rec.run.is_terminal else [cancelled(tick)]
            kinds = [k for k in ADMISSION_WEIGHTS if candidates[k]]
            if not kinds:
                break
            chosen = candidates[kinds[draw(_index(len(kinds)))]]
            fact = chosen[draw(_index(len(chosen)))]
        before = rec.run
        actions = rec.feed(fact, at(tick))
        steps.append((fact, before, rec.run, actions))
    return AdmittedRun(wf, rec.facts, rec.history, steps, rec.run)
