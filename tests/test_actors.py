"""RunDirectory and RunActor driven message by message on in-memory ports and a fake clock:
passivation, supervision, quarantine, and fires of finished runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from dagnats.actors.directory import INDEX_AFTER, QUARANTINE_AFTER
from dagnats.actors.messages import Deliver, LetGo, LiveCount
from dagnats.actors.runtime import start_directory
from dagnats.actors.timer import TimerActor
from dagnats.domain import events as ev
from dagnats.domain.actions import Acquire
from dagnats.domain.definition import RateLimit, StepDef, WorkflowDef
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.kinds.admission import Answer
from dagnats.domain.partition import partition_of
from dagnats.domain.state import RunStatus
from dagnats.domain.timers import fired_event

from fakes import FakeClock, HostLoop
from memory_ports import MemoryPorts

CHAIN = WorkflowDef(name="chain", steps=(StepDef(id="a", task="ta"), StepDef(id="b", task="tb", depends_on=("a",))))
STAMP = ev.format_timestamp(datetime(2025, 1, 1, tzinfo=UTC))


class Acks:
    """The outcome of each delivery, as the engine's acker would see it."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[bool, float]] = []
        self.repeated: list[bool] = []  # per outcome: a start that found the run started
        self.changed = threading.Condition()

    def done(self, ok: bool, retry_in: float = 0.5, repeated: bool = False) -> None:
        with self.changed:
            self.outcomes.append((ok, retry_in))
            self.repeated.append(repeated)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[bool, float]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.outcomes) >= count, timeout):
                raise AssertionError(f"{len(self.outcomes)} of {count} deliveries settled")
            return list(self.outcomes)


@pytest.fixture(params=["hosted", "threads"])
def engine(request):
    """Every test runs twice: with the directory and its run actors hosted on an event
    loop's thread (as the engine runs them) and with each on a thread of its own."""
    clock = FakeClock()
    ports = MemoryPorts(clock)
    host = HostLoop() if request.param == "hosted" else None
    if host is not None:
        ports.host = host.post
    timers = TimerActor.start(clock, ports.timers)
    started = []

    def start(max_live: int = 512, quarantine_retry: float = 30.0):
        directory = start_directory(ports, timers, max_live, quarantine_retry)
        started.append(directory)
        return directory

    yield ports, clock, timers, start
    for ref in [*started, timers]:
        ref.stop(block=host is not None, timeout=5)
    if host is not None:
        host.close()


def start_fact(run_id: str) -> ev.Event:
    return ev.WorkflowStarted(
        run_id=run_id, timestamp=STAMP, id=ev.WORKFLOW_STARTED, payload=ev.RunStart(workflow_def=CHAIN, input=run_id)
    )


def completed(run_id: str, step: str, output: str) -> ev.Event:
    return ev.StepCompleted(
        run_id=run_id,
        step_id=step,
        attempt=1,
        timestamp=STAMP,
        payload=output,
        id=ev.fact_id(ev.STEP_COMPLETED, step, 1),
    )


def deliver(directory, acks: Acks, event: ev.Event) -> None:
    directory.tell(Deliver(event.run_id, (event,), acks.done))


def test_live_actors_stay_within_max_live_and_a_passivated_run_carries_on_from_its_history(engine):
    ports, clock, timers, start = engine
    directory = start(max_live=2)
    acks = Acks()
    runs = [f"run-{n}" for n in range(5)]
    for n, run_id in enumerate(runs):
        deliver(directory, acks, start_fact(run_id))
        acks.wait_for(n + 1)
        assert directory.ask(LiveCount()) <= 2
    for run_id in runs:  # the first runs were passivated long ago: each is rebuilt
        deliver(directory, acks, completed(run_id, "a", f"{run_id}-a"))
    assert all(ok for ok, _ in acks.wait_for(10))
    for run_id in runs:
        queued_b = [e for e in ports.history.events(run_id) if isinstance(e, ev.StepQueued) and e.step_id == "b"]
        assert [e.payload.input for e in queued_b] == [f"{run_id}-a"]
    assert len([t for t in ports.tasks.published if t.task == "tb"]) == 5


def test_a_start_for_a_run_already_started_is_answered_repeated_live_passivated_or_ended(engine):
    """The run's owner tells a start that started the run from one that came after one
    (the control plane then compares the two): whether the run's actor is live, was
    passivated (a fresh actor finds the history by its failed expectation) or the run
    has ended. Nothing is recorded for a repeated start."""
    ports, clock, timers, start = engine
    directory = start(max_live=1)
    acks = Acks()
    deliver(directory, acks, start_fact("r1"))
    deliver(directory, acks, start_fact("r1"))  # live
    acks.wait_for(2)
    deliver(directory, acks, start_fact("r2"))  # r1 passivates: one live actor at most
    acks.wait_for(3)
    deliver(directory, acks, start_fact("r1"))  # passivated
    acks.wait_for(4)
    for fact in (start_fact("r3"), completed("r3", "a", "A"), completed("r3", "b", "B")):
        deliver(directory, acks, fact)
    acks.wait_for(7)
    _until(lambda: directory.ask(LiveCount()) == 0)  # r3 ended and passivated
    deliver(directory, acks, start_fact("r3"))  # ended
    outcomes = acks.wait_for(8)
    assert all(ok for ok, _ in outcomes)
    assert acks.repeated[:4] == [False, True, False, True] and acks.repeated[-1] is True
    for run_id in ("r1", "r3"):
        assert [type(e) for e in ports.history.events(run_id)].count(ev.WorkflowStarted) == 1


def test_a_finished_run_passivates_at_once_and_its_late_timer_fires_start_no_actor(engine):
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    run_to_its_end(directory, acks, "r1")
    fire = ev.TimerFired(
        run_id="r1",
        timestamp=STAMP,
        id="timer.late",
        payload=ev.TimerFire(timer_id="step-timeout-b-1", kind="step_timeout", step_id="b", attempt=1),
    )
    deliver(directory, acks, fire)
    assert acks.wait_for(4)[-1] == (True, 0.5)  # acked and dropped
    assert directory.ask(LiveCount()) == 0
    assert ports.history.load("r1")[0].status == RunStatus.COMPLETED


def test_a_crashed_actor_hands_its_facts_back_and_is_rebuilt_from_history(engine):
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("r1"))
    acks.wait_for(1)
    failures = ["once"]

    def fail_once(run_id: str) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("injected: the store refused this append")

    ports.history.before_append = fail_once
    deliver(directory, acks, completed("r1", "a", "A"))
    assert acks.wait_for(2)[-1][0] is False  # handed back for redelivery
    deliver(directory, acks, completed("r1", "a", "A"))  # the redelivery: a rebuilt actor records it
    assert acks.wait_for(3)[-1][0] is True
    steps = [(e.type, e.step_id) for e in ports.history.events("r1")]
    assert steps.count((ev.STEP_COMPLETED, "a")) == 1 and (ev.STEP_QUEUED, "b") in steps


def test_a_poison_run_is_held_back_between_tries_by_the_injected_clock(engine):
    ports, clock, timers, start = engine
    directory = start(quarantine_retry=30.0)
    acks = Acks()
    deliver(directory, acks, start_fact("healthy"))
    deliver(directory, acks, start_fact("poison"))
    acks.wait_for(2)
    tries = []

    def poison(run_id: str) -> None:
        if run_id == "poison" and not healed:
            tries.append(1)
            raise RuntimeError("injected: this run's records cannot be stored")

    healed: list[bool] = []
    ports.history.before_append = poison
    for n in range(QUARANTINE_AFTER + 3):  # quick crashes, then redeliveries held back
        deliver(directory, acks, completed("poison", "a", "A"))
        acks.wait_for(3 + n)
    assert len(tries) == QUARANTINE_AFTER + 1  # the first try after quarantine is allowed, then held
    assert acks.outcomes[-1] == (False, 30.0)
    deliver(directory, acks, completed("healthy", "a", "fine"))  # other runs carry on
    assert acks.wait_for(3 + QUARANTINE_AFTER + 3)[-1][0] is True
    healed.append(True)
    deliver(directory, acks, completed("poison", "a", "A"))
    assert acks.wait_for(4 + QUARANTINE_AFTER + 3)[-1] == (False, 30.0)  # still within the period
    clock.advance(30.0)
    deliver(directory, acks, completed("poison", "a", "A"))
    assert acks.wait_for(5 + QUARANTINE_AFTER + 3)[-1][0] is True
    assert any(isinstance(e, ev.StepQueued) and e.step_id == "b" for e in ports.history.events("poison"))


def test_a_run_that_meets_a_nats_outage_is_rebuilt_each_time_and_never_quarantined(engine):
    """NATS not answering (a node lost, leaders being elected) crashes every live run's
    actor alike: each is rebuilt, its facts come back a little later, and none is held
    back as a poison run once NATS answers again."""
    from dagnats.actors.run import UNAVAILABLE_RETRY
    from dagnats.domain.errors import Unavailable

    ports, clock, timers, start = engine
    directory = start(quarantine_retry=30.0)
    acks = Acks()
    deliver(directory, acks, start_fact("r1"))
    acks.wait_for(1)
    outage = [True]

    def unanswered(run_id: str) -> None:
        if outage:
            raise Unavailable("NATS did not answer: NoStreamResponseError()")

    ports.history.before_append = unanswered
    for n in range(QUARANTINE_AFTER + 3):
        deliver(directory, acks, completed("r1", "a", "A"))
        assert acks.wait_for(2 + n)[-1] == (False, UNAVAILABLE_RETRY)
    outage.clear()
    deliver(directory, acks, completed("r1", "a", "A"))  # no quarantine period to wait out
    assert acks.wait_for(2 + QUARANTINE_AFTER + 3)[-1][0] is True
    assert any(isinstance(e, ev.StepQueued) and e.step_id == "b" for e in ports.history.events("r1"))


def test_a_run_crashed_by_an_outage_is_rebuilt_without_a_delivery_and_reissues_its_task(engine):
    """An outage crashes a run's actor, and the delivery that met it is not coming back (its
    answer was lost with the outage): the directory brings the run up again from its
    history ``REBUILD_AFTER`` later, by the injected clock, and it re-issues the task it
    waits on. Nothing is delivered meanwhile."""
    from dagnats.actors.directory import REBUILD_AFTER
    from dagnats.domain.errors import Unavailable

    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("r1"))
    acks.wait_for(1)
    assert [t.payload.step_id for t in ports.tasks.published] == ["a"]
    outage = [True]

    def unanswered(run_id: str) -> None:
        if outage:
            raise Unavailable("NATS did not answer: TimeoutError()")

    ports.history.before_append = unanswered
    deliver(directory, acks, completed("r1", "a", "A"))
    assert acks.wait_for(2)[-1][0] is False
    _until(lambda: directory.ask(LiveCount()) == 0)  # crashed: no actor holds the run
    outage.clear()
    clock.advance(REBUILD_AFTER / 2)
    assert [t.payload.step_id for t in ports.tasks.published] == ["a"]  # not yet
    clock.advance(REBUILD_AFTER / 2)
    _until(lambda: [t.payload.step_id for t in ports.tasks.published] == ["a", "a"])
    assert directory.ask(LiveCount()) == 1  # live again, waiting on its step
    assert len(acks.outcomes) == 2  # nothing was delivered to bring it up


def test_a_rebuild_finds_a_live_actor_or_an_ended_run_and_starts_nothing(engine):
    from dagnats.actors.messages import Rebuild

    ports, clock, timers, start = engine
    directory = start()
    run_to_its_end(directory, Acks(), "ended")
    published = len(ports.tasks.published)
    directory.tell(Rebuild("ended"))
    assert directory.ask(LiveCount()) == 0
    acks = Acks()
    deliver(directory, acks, start_fact("live"))
    acks.wait_for(1)
    directory.tell(Rebuild("live"))  # a delivery brought it up first
    assert directory.ask(LiveCount()) == 1
    assert len(ports.tasks.published) == published + 1  # its first task, not issued again


def run_to_its_end(directory, acks: Acks, run_id: str) -> None:
    """Start the chain, complete both steps, and wait until its actor has passivated."""
    deliver(directory, acks, start_fact(run_id))
    deliver(directory, acks, completed(run_id, "a", "A"))
    deliver(directory, acks, completed(run_id, "b", "B"))
    acks.wait_for(3)
    _until(lambda: directory.ask(LiveCount()) == 0)


def _until(predicate, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_a_liveness_check_that_finds_its_worker_alive_records_nothing_and_arms_the_next(engine):
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    soft = WorkflowDef(name="soft", sticky="soft", steps=(StepDef(id="a", task="ta"),))
    deliver(
        directory,
        acks,
        ev.WorkflowStarted(
            run_id="r1", timestamp=STAMP, id=ev.WORKFLOW_STARTED, payload=ev.RunStart(workflow_def=soft)
        ),
    )
    deliver(
        directory,
        acks,
        ev.StepStarted(
            run_id="r1", step_id="a", attempt=1, timestamp=STAMP, worker_id="w1", id=ev.fact_id(ev.STEP_STARTED, "a", 1)
        ),
    )
    acks.wait_for(2)
    records = len(ports.history.read_after("r1", 0))
    for n in range(10):  # twenty seconds of checks, the worker alive at each
        check = ports.timers.schedules[("r1", "sticky-check-a-1")]
        fire = ev.TimerFired(
            run_id="r1",
            timestamp=check.due,
            id=f"timer.{check.timer_id}.{check.due}",
            payload=ev.TimerFire(
                timer_id=check.timer_id, kind=check.kind, step_id="a", attempt=1, worker_id="w1", due=check.due
            ),
        )
        clock.advance(2.0)
        deliver(directory, acks, fire)
        acks.wait_for(3 + n)
        _until(lambda due=check.due: ports.timers.schedules[("r1", "sticky-check-a-1")].due != due)
    assert len(ports.history.read_after("r1", 0)) == records


class WaitOnceThenGrant:
    """Flow control that tells the first request to wait a second, then grants."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.asked = clock, 0

    def acquire(self, acquire: Acquire) -> Answer:
        self.asked += 1
        if self.asked == 1:
            retry_at = int(self.clock.now().timestamp() * 1000) + 1000
            return Answer(False, (), "rate.ta", "rate_limit of task ta", retry_at)
        return Answer(True)

    def release(self, releases: list) -> None:
        pass


def test_a_report_folded_before_the_fact_that_dispatches_its_attempt_comes_again(engine):
    ports, clock, timers, start = engine
    ports.flow = WaitOnceThenGrant(clock)
    directory = start()
    acks = Acks()
    rated = WorkflowDef(name="rated", steps=(StepDef(id="a", task="ta", rate_limit=RateLimit(1, 10**9)),))
    deliver(
        directory,
        acks,
        ev.WorkflowStarted(
            run_id="r1", timestamp=STAMP, id=ev.WORKFLOW_STARTED, payload=ev.RunStart(workflow_def=rated)
        ),
    )
    acks.wait_for(1)
    fire = fired_event("r1", ports.timers.schedules[("r1", "limit-a-1")])
    report = ev.StepCompleted(
        run_id="r1",
        step_id="a",
        attempt=1,
        timestamp=ev.format_timestamp(clock.now()),
        worker_id="w1",
        payload="A",
        id=ev.fact_id(ev.STEP_COMPLETED, "a", 1),
    )
    directory.tell(Deliver("r1", (report, fire), acks.done))  # one fetch: the report first
    ok, _ = acks.wait_for(2)[-1]
    assert not ok, "acked: the report was dropped and step a stays queued"
    # Delivered again, the report completes the attempt the fire dispatched.
    deliver(directory, acks, report)
    ok, _ = acks.wait_for(3)[-1]
    assert ok
    assert ports.history.load("r1")[0].status == RunStatus.COMPLETED


def test_a_report_that_arrives_before_its_runs_start_is_recorded_comes_again(engine):
    # The engine that decided the start published task a with the start's record and died
    # before the record landed; the worker's report reached the run first. Found by the
    # simulation (tests/sim/fuzz_cases.txt, seed 155): acked and dropped, the run never ended.
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    report = ev.StepCompleted(
        run_id="r1",
        step_id="a",
        attempt=1,
        timestamp=ev.format_timestamp(clock.now()),
        worker_id="w1",
        payload="A",
        id=ev.fact_id(ev.STEP_COMPLETED, "a", 1),
    )
    deliver(directory, acks, report)
    ok, _ = acks.wait_for(1)[-1]
    assert not ok, "acked: the report was dropped before the run's start was recorded"
    deliver(directory, acks, start_fact("r1"))
    deliver(directory, acks, report)
    assert all(ok for ok, _ in acks.wait_for(3)[1:])
    steps = [(e.type, e.step_id) for e in ports.history.events("r1")]
    assert (ev.STEP_COMPLETED, "a") in steps and (ev.STEP_QUEUED, "b") in steps


def napping(duration: str) -> WorkflowDef:
    return WorkflowDef(
        name="nap",
        steps=(
            StepDef(id="nap", type="sleep", config={"duration": duration}),
            StepDef(id="after", task="ta", depends_on=("nap",)),
        ),
    )


def start_of(defn: WorkflowDef, run_id: str) -> ev.Event:
    return ev.WorkflowStarted(
        run_id=run_id, timestamp=STAMP, id=ev.WORKFLOW_STARTED, payload=ev.RunStart(workflow_def=defn, input=None)
    )


def test_a_run_that_only_sleeps_long_holds_no_actor_and_its_timer_brings_it_back(engine):
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_of(napping("1h"), "r1"))
    acks.wait_for(1)
    _until(lambda: directory.ask(LiveCount()) == 0)  # passivated: no actor, no thread
    assert ports.history.load("r1")[0].step("nap").status == "running"
    (timer,) = [t for (run_id, _), t in ports.timers.schedules.items() if run_id == "r1"]
    clock.advance(3600)
    deliver(directory, acks, fired_event("r1", timer, ""))
    assert all(ok for ok, _ in acks.wait_for(2))
    run = ports.history.load("r1")[0]
    assert run.step("nap").status == "completed" and run.step("after").status == "queued"
    assert [t.task for t in ports.tasks.published] == ["ta"]


def test_a_short_sleep_or_a_run_with_work_in_flight_keeps_its_actor(engine):
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_of(napping("5s"), "short"))
    deliver(directory, acks, start_fact("busy"))  # step a queued: not asleep
    acks.wait_for(2)
    assert directory.ask(LiveCount()) == 2


class SnapshotLog:
    """Every snapshot the actors write, in order: (run, status, last_seq, waited); and
    whether each run was ``listed`` when a snapshot said so (its open key to purge)."""

    def __init__(self, ports: MemoryPorts) -> None:
        self.saved: list[tuple[str, str, int, bool]] = []
        self.listed: dict[str, list[bool]] = {}
        save = ports.history.save_snapshot

        def logged(run, last_seq, wait, listed=True):
            self.saved.append((run.run_id, run.status.value, last_seq, wait))
            self.listed.setdefault(run.run_id, []).append(listed)
            save(run, last_seq, wait, listed)

        ports.history.save_snapshot = logged

    def of(self, run_id: str) -> list[tuple[str, int, bool]]:
        return [(status, seq, waited) for run, status, seq, waited in self.saved if run == run_id]


def test_a_run_that_ends_soon_after_its_start_writes_one_snapshot_its_last(engine):
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    run_to_its_end(directory, acks, "quick")
    clock.advance(INDEX_AFTER + 0.1)  # its index tick finds no live actor
    directory.ask(LiveCount())  # the tick has been handled
    assert [status for status, _, _ in log.of("quick")] == ["completed"]
    assert log.listed["quick"] == [False]  # no open key to purge


def test_a_runs_last_snapshot_is_on_its_way_before_its_end_is_published(engine):
    """Whoever learns of the end (a waiter, then perhaps a delete) finds the snapshot under
    way: the store waits for it before purging, instead of being overtaken by it."""
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    order: list[tuple[str, str]] = []
    publish = ports.state.publish

    def published(run, last_seq, recorded):
        order.append(("published", run.status.value))
        publish(run, last_seq, recorded)

    ports.state.publish = published
    save = ports.history.save_snapshot

    def saved(run, last_seq, wait, listed=True):
        order.append(("saved", run.status.value))
        save(run, last_seq, wait, listed)

    ports.history.save_snapshot = saved
    directory = start()
    run_to_its_end(directory, Acks(), "ends")
    assert [status for status, _, _ in log.of("ends")] == ["completed"]
    ended = [entry for entry in order if entry[1] == "completed"]
    assert ended == [("saved", "completed"), ("published", "completed")]


def test_a_listed_run_that_ends_has_its_open_key_taken_out(engine):
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("slow"))
    acks.wait_for(1)
    clock.advance(INDEX_AFTER + 0.1)
    _until(lambda: log.of("slow") == [("running", 1, False)])
    deliver(directory, acks, completed("slow", "a", "A"))
    deliver(directory, acks, completed("slow", "b", "B"))
    acks.wait_for(3)
    _until(lambda: [status for status, _, _ in log.of("slow")] == ["running", "completed"])
    assert log.listed["slow"] == [True, True]


def test_a_run_still_live_after_index_after_is_listed_in_the_snapshot_index(engine):
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("slow"))
    acks.wait_for(1)
    clock.advance(INDEX_AFTER / 2)
    deliver(directory, acks, start_fact("later"))
    acks.wait_for(2)
    assert log.of("slow") == [] and log.of("later") == []
    clock.advance(INDEX_AFTER / 2 + 0.01)
    _until(lambda: log.of("slow") == [("running", 1, False)])
    assert log.of("later") == []  # started half a period later: not due yet
    clock.advance(INDEX_AFTER / 2)
    _until(lambda: log.of("later") == [("running", 2, False)])
    assert ports.history.load("slow")[0].status == RunStatus.RUNNING


def test_a_stopping_directory_lists_its_live_unlisted_runs_before_it_stops(engine):
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("young"))
    acks.wait_for(1)
    assert log.of("young") == []
    directory.stop()
    assert log.of("young") == [("running", 1, True)]


def test_a_run_rebuilt_from_its_history_is_listed_at_once(engine):
    """Its first owner may have gone before listing it: the next one does not wait."""
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    first = start()
    acks = Acks()
    deliver(first, acks, start_fact("moved"))
    acks.wait_for(1)
    first.stop(block=True)
    log.saved.clear()
    ports.history.snapshots.clear()  # the first owner was killed before its index landed
    second = start()
    deliver(second, acks, completed("moved", "a", "A"))
    acks.wait_for(2)
    assert log.of("moved")[0] == ("running", 1, False)


def test_a_result_delivered_again_sends_out_again_what_its_record_dispatched(engine):
    """The engine that recorded a's result may have been killed before it published b's
    task; a's report then comes back, changes nothing, and b's task goes out again (under
    the same message id: a copy that did go out is deduplicated)."""
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, start_fact("r1"))
    deliver(directory, acks, completed("r1", "a", "A"))
    acks.wait_for(2)
    first = [t for t in ports.tasks.published if t.task == "tb"]
    records = len(ports.history.records["r1"])
    deliver(directory, acks, completed("r1", "a", "A"))  # the same report, again
    assert acks.wait_for(3)[-1] == (True, 0.5)
    again = [t for t in ports.tasks.published if t.task == "tb"]
    assert len(first) == 1 and len(again) == 2 and again[1] == first[0]
    assert len(ports.history.records["r1"]) == records  # nothing recorded twice


def runs_in(partition: int, partitions: int, count: int) -> list[str]:
    """``count`` run ids of ``partition``."""
    found = (f"run-{n}" for n in range(10_000))
    return [r for r in found if partition_of(r, partitions) == partition][:count]


def test_a_lost_partitions_runs_stop_here_and_come_back_from_their_history(engine):
    """Another engine appends to these runs now: an actor kept here would hold a stale state
    (its next append a conflict) and its snapshots could list a run ended there meanwhile.
    Handed over, a young run is listed once, with its state at the hand-over."""
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    lost, kept = runs_in(0, 2, 1)[0], runs_in(1, 2, 1)[0]
    deliver(directory, acks, start_fact(lost))
    deliver(directory, acks, start_fact(kept))
    acks.wait_for(2)
    directory.tell(LetGo(0, 2))
    _until(lambda: directory.ask(LiveCount()) == 1)
    _until(lambda: [(status, waited) for status, _, waited in log.of(lost)] == [("running", True)])
    clock.advance(INDEX_AFTER + 0.1)  # the index tick lists the kept run, and nothing more of the lost one
    _until(lambda: [status for status, _, _ in log.of(kept)] == ["running"])
    assert len(log.of(lost)) == 1
    # Its new owner moves it on; taken back, it is rebuilt from its history, not refolded
    # after a conflict.
    elsewhere = start()
    deliver(elsewhere, acks, completed(lost, "a", "A"))
    acks.wait_for(3)
    conflicts: list[int] = []
    append = ports.history.append

    def counted(run_id, record, expected_seq, msg_id):
        try:
            return append(run_id, record, expected_seq, msg_id)
        except WrongLastSequence:
            conflicts.append(expected_seq)
            raise

    ports.history.append = counted
    deliver(directory, acks, completed(lost, "b", "B"))
    assert all(ok for ok, _ in acks.wait_for(4))
    assert ports.history.load(lost)[0].status == RunStatus.COMPLETED
    assert conflicts == []


def test_a_partition_whose_lease_lapsed_lists_none_of_its_runs_from_here(engine):
    """Another engine may be moving them already: this one's state may be stale."""
    ports, clock, timers, start = engine
    log = SnapshotLog(ports)
    directory = start()
    acks = Acks()
    lost = runs_in(0, 2, 1)[0]
    deliver(directory, acks, start_fact(lost))
    acks.wait_for(1)
    directory.tell(LetGo(0, 2, handed_over=False))
    _until(lambda: directory.ask(LiveCount()) == 0)
    clock.advance(INDEX_AFTER + 0.1)
    directory.ask(LiveCount())  # the tick has been handled
    assert log.of(lost) == []
