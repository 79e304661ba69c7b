"""LoopBridge: actor threads run coroutines on the loop and block only themselves."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from dagnats.domain.errors import Unavailable
from dagnats.infra.engine.bridge import LoopBridge, poster


@pytest.fixture
def bridge():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield LoopBridge(loop, timeout=2.0)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def _twice(n: int) -> int:
    await asyncio.sleep(0)
    return 2 * n


async def _fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("wrong last sequence")


def test_calls_from_many_threads_each_get_their_own_answer(bridge):
    answers: dict[int, int] = {}

    def caller(n: int) -> None:
        for k in range(50):
            answers[n * 1000 + k] = bridge.call(_twice(n * 1000 + k))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {key: 2 * key for key in answers} and len(answers) == 400
    assert not bridge._tasks  # no task left referenced


def test_a_failing_call_raises_its_own_error_and_a_stuck_one_times_out(bridge):
    with pytest.raises(ValueError, match="wrong last sequence"):
        bridge.call(_fail())
    bridge.timeout = 0.2
    with pytest.raises(Unavailable, match="did not finish a call"):
        bridge.call(asyncio.sleep(5))


def test_nats_not_answering_comes_back_as_unavailable_with_its_cause(bridge):
    from nats.js.errors import NoStreamResponseError

    async def unanswered() -> None:
        raise NoStreamResponseError()

    with pytest.raises(Unavailable) as caught:
        bridge.call(unanswered())
    assert isinstance(caught.value.__cause__, NoStreamResponseError)


def test_a_spawned_failure_is_logged(bridge, caplog):
    done = threading.Event()

    async def failing() -> None:
        try:
            raise RuntimeError("snapshot not saved")
        finally:
            bridge.loop.call_soon(done.set)

    with caplog.at_level(logging.WARNING, logger="dagnats.bridge"):
        bridge.spawn(failing())
        assert done.wait(5)
        bridge.call(_twice(1))  # the failure's callback has run by the next call's end
    assert "snapshot not saved" in caplog.text


def test_posted_callbacks_run_in_order_with_one_wake_up_while_the_loop_is_busy(bridge, caplog):
    """Posts made while the loop is busy wait for one wake-up and run in the order posted;
    a failing callback is logged and the ones after it still run."""
    post = bridge.post
    assert post is poster(bridge.loop)  # one per loop: the reader and the handoff share it
    busy, release = threading.Event(), threading.Event()
    ran: list[int] = []
    wakes = 0
    real_run = post._run

    def counted_run() -> None:
        nonlocal wakes
        wakes += 1
        real_run()

    post._run = counted_run
    post(lambda: (busy.set(), release.wait(5)))  # holds the loop
    assert busy.wait(5)

    def boom() -> None:
        raise ValueError("a callback failed")

    for n in range(100):
        post(ran.append, n)
        if n == 50:
            post(boom)
    done = threading.Event()
    post(done.set)
    with caplog.at_level(logging.ERROR, logger="dagnats.bridge"):
        release.set()
        assert done.wait(5)
    assert ran == list(range(100))
    assert wakes == 2  # the busy callback's, then one for the 102 posted while it ran
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["a callback failed"]
