"""Actors hosted on the event loop's thread, each on a greenlet (``actors.hosted``): one
message at a time and in order, as a threaded actor; a call to the loop parks only the
actor that made it; the loop's thread is the only thread they run on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pykka
import pytest

from dagnats.actors.hosted import HostedActor, hosted_greenlet, wait_until
from dagnats.domain.errors import Unavailable
from dagnats.infra.engine.bridge import LoopBridge

from fakes import HostLoop


@pytest.fixture
def loop_bridge():
    """A loop on a thread of its own, and its bridge made on that loop (as the engine does)."""
    host = HostLoop()
    bridge = host.on_loop(lambda: LoopBridge(host.loop, timeout=5.0))
    yield bridge, host.thread
    for kind in (Caller, Waiter):
        for ref in pykka.ActorRegistry.get_by_class(kind):
            ref.stop(block=True, timeout=5)
    host.close()


class Gates:
    """Named asyncio events set from the test's thread: a call waits on its gate."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: dict[str, asyncio.Event] = {}

    def get(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    async def passed(self, name: str) -> str:
        await self.get(name).wait()
        return name.upper()

    def open(self, name: str) -> None:
        asyncio.run_coroutine_threadsafe(self._set(name), self.loop).result(5)

    async def _set(self, name: str) -> None:
        self.get(name).set()


class Caller(HostedActor):
    """Logs each message it begins and ends; in between it calls the loop and waits for the
    message's gate, as a run actor waits for its append."""

    def __init__(self, name: str, bridge: LoopBridge, gates: Gates, log: list[Any]) -> None:
        super().__init__()
        self.host = bridge.post
        self.name, self.bridge, self.gates, self.log = name, bridge, gates, log

    def on_receive(self, message: Any) -> Any:
        self.log.append(("begin", message, threading.get_ident(), hosted_greenlet() is not None))
        if message == "fail":
            return self.bridge.call(_unanswered())
        if isinstance(message, tuple):  # ("steps", gates...): one call awaiting each in turn
            return self.bridge.call(self._steps(message[1:]))
        result = self.bridge.call(self.gates.passed(message))
        self.log.append(("end", message))
        return result

    async def _steps(self, names: tuple[str, ...]) -> list[str]:
        passed = []
        try:
            for name in names:
                passed.append(await self.gates.passed(name))
                await asyncio.sleep(0)  # a bare yield: the loop's turn, then on
            return passed
        except BaseException as err:
            self.log.append(("raised", type(err).__name__))
            raise
        finally:
            self.log.append(("finally", tuple(passed)))


async def _unanswered() -> None:
    from nats.errors import TimeoutError as NatsTimeout

    raise NatsTimeout()


def _until(check, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_an_actor_waiting_on_the_loop_holds_up_neither_the_loop_nor_other_actors(loop_bridge):
    bridge, loop_thread = loop_bridge
    gates, log = Gates(bridge.loop), []
    a = Caller.start("a", bridge, gates, log)
    b = Caller.start("b", bridge, gates, log)
    a.tell("a1")
    a.tell("a2")  # queued behind a1, which waits for its gate
    _until(lambda: ("begin", "a1", loop_thread.ident, True) in log)
    gates.open("b1")
    assert b.ask("b1", timeout=5) == "B1"  # handled while a is parked
    assert ("begin", "a2", loop_thread.ident, True) not in log
    gates.open("a1")
    gates.open("a2")
    _until(lambda: ("end", "a2") in log)
    order = [(entry[0], entry[1]) for entry in log]
    assert order == [("begin", "a1"), ("begin", "b1"), ("end", "b1"), ("end", "a1"), ("begin", "a2"), ("end", "a2")]
    assert {entry[2] for entry in log if entry[0] == "begin"} == {loop_thread.ident}
    assert not bridge._tasks  # every call's task done and dropped


def test_many_actors_each_get_their_own_answers_in_order(loop_bridge):
    bridge, _ = loop_bridge
    gates, log = Gates(bridge.loop), []
    actors = [Caller.start(f"x{n}", bridge, gates, log) for n in range(50)]
    names = [f"m{n}-{k}" for n in range(50) for k in range(4)]
    for name in names:
        gates.open(name)
    futures = [(name, actors[int(name[1:].split("-")[0])].ask(name, block=False)) for name in names]
    assert [(name, future.get(timeout=10)) for name, future in futures] == [(name, name.upper()) for name in names]
    for n in range(50):  # each actor handled its own four in the order it was told them
        mine = [entry[1] for entry in log if entry[0] == "end" and entry[1].startswith(f"m{n}-")]
        assert mine == [f"m{n}-{k}" for k in range(4)]


def test_nats_not_answering_a_parked_call_is_unavailable_to_the_actor(loop_bridge):
    bridge, _ = loop_bridge
    gates = Gates(bridge.loop)
    actor = Caller.start("f", bridge, gates, [])
    with pytest.raises(Unavailable, match="NATS did not answer"):
        actor.ask("fail", timeout=5)
    gates.open("next")
    assert actor.ask("next", timeout=5) == "NEXT"  # the actor goes on with its next message


def test_a_hosted_actor_stops_from_another_thread_and_takes_no_more_messages(loop_bridge):
    bridge, _ = loop_bridge
    gates, log = Gates(bridge.loop), []
    actor = Caller.start("s", bridge, gates, log)
    gates.open("last")
    assert actor.ask("last", timeout=5) == "LAST"
    actor.stop(block=True, timeout=5)
    assert not actor.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        actor.tell("after")


class Waiter(HostedActor):
    """Parks until a flag is set (``wait_until``), as the directory waits for its runs to stop."""

    def __init__(self, bridge: LoopBridge, flag: threading.Event) -> None:
        super().__init__()
        self.host, self.flag = bridge.post, flag

    def on_receive(self, message: Any) -> Any:
        return wait_until(self.flag.is_set, float(message), self.host, poll=0.01)


def test_wait_until_parks_until_done_or_the_timeout(loop_bridge):
    bridge, _ = loop_bridge
    flag = threading.Event()
    waiter = Waiter.start(bridge, flag)
    assert waiter.ask(0.05, timeout=5) is False  # timed out, flag unset
    pending = waiter.ask(30, block=False)
    flag.set()
    assert pending.get(timeout=5) is True


def test_a_parked_call_the_loop_does_not_finish_in_time_is_unavailable(loop_bridge):
    bridge, _ = loop_bridge
    bridge.timeout = 0.2
    gates = Gates(bridge.loop)
    actor = Caller.start("t", bridge, gates, [])
    with pytest.raises(Unavailable, match="did not finish a call within 0.2s"):
        actor.ask("never", timeout=5)  # its gate is never opened: the call is cancelled
    gates.open("after")
    assert actor.ask("after", timeout=5) == "AFTER"
    assert not bridge._tasks


def test_an_actor_let_go_while_parked_fails_its_message_and_stops_alone(loop_bridge):
    """The host letting go of a parked greenlet (``GreenletExit``, as when it is collected)
    reaches the actor as ``Abandoned``, an error: the asker hears of it and that actor
    stops, while pykka's answer to a ``GreenletExit`` (stop every actor) does not happen."""
    import greenlet

    from dagnats.actors.hosted import Abandoned

    bridge, _ = loop_bridge
    gates, log = Gates(bridge.loop), []
    dropped = Caller.start("d", bridge, gates, log)
    other = Caller.start("o", bridge, gates, log)
    pending = dropped.ask("held", block=False)
    _until(lambda: any(entry[1] == "held" for entry in log))
    actor = dropped._actor_weakref()  # the test reaches in: only the host can throw into its greenlet
    bridge.loop.call_soon_threadsafe(actor._greenlet.throw, greenlet.GreenletExit)
    with pytest.raises(Abandoned):
        pending.get(timeout=5)
    gates.open("still")
    assert other.ask("still", timeout=5) == "STILL"


def test_a_parked_call_is_stepped_on_the_actor_s_greenlet_through_each_await(loop_bridge):
    """No task per call: the coroutine runs on the actor's greenlet, parked at each await
    (futures and bare yields alike) while the loop and other actors go on; a call the loop
    does not finish in time has what it awaits cancelled, and its own cleanup runs."""
    bridge, loop_thread = loop_bridge
    gates, log = Gates(bridge.loop), []
    stepper = Caller.start("st", bridge, gates, log)
    other = Caller.start("ot", bridge, gates, log)
    pending = stepper.ask(("steps", "g1", "g2", "g3"), block=False)
    gates.open("g1")
    _until(lambda: ("begin", ("steps", "g1", "g2", "g3"), loop_thread.ident, True) in log)
    gates.open("o1")
    assert other.ask("o1", timeout=5) == "O1"  # while the stepper waits for g2
    assert not bridge._tasks  # it waits on its greenlet: no task runs its call
    gates.open("g2")
    gates.open("g3")
    assert pending.get(timeout=5) == ["G1", "G2", "G3"]
    assert ("finally", ("G1", "G2", "G3")) in log
    bridge.timeout = 0.2
    gates.open("h1")
    with pytest.raises(Unavailable, match="did not finish a call within 0.2s"):
        stepper.ask(("steps", "h1", "never"), timeout=5)
    assert log[-2:] == [("raised", "CancelledError"), ("finally", ("H1",))]
    assert not gates.get("never")._waiters  # the wait itself was cancelled, not left behind


def test_a_call_let_go_while_parked_runs_its_coroutine_s_cleanup(loop_bridge):
    import greenlet

    from dagnats.actors.hosted import Abandoned

    bridge, _ = loop_bridge
    gates, log = Gates(bridge.loop), []
    dropped = Caller.start("dc", bridge, gates, log)
    pending = dropped.ask(("steps", "k1", "held"), block=False)
    gates.open("k1")
    _until(lambda: bool(gates.get("held")._waiters))
    actor = dropped._actor_weakref()
    bridge.loop.call_soon_threadsafe(actor._greenlet.throw, greenlet.GreenletExit)
    with pytest.raises(Abandoned):
        pending.get(timeout=5)
    assert ("raised", "GeneratorExit") in log and ("finally", ("K1",)) in log
