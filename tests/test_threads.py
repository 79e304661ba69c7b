"""The pooled threads run actors: each live actor has a thread, threads are reused, idle ones end."""

from __future__ import annotations

import threading
import time

import pykka

from dagnats.actors.threads import PooledActor, ThreadPool


def _wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_loops_running_at_once_each_have_a_thread():
    pool = ThreadPool("t", idle=5.0)
    count = 40
    everyone = threading.Barrier(count + 1, timeout=5)
    for _ in range(count):
        pool.submit(everyone.wait)  # no loop can finish before all of them run
    everyone.wait()


def test_a_finished_loop_leaves_its_thread_for_the_next():
    pool = ThreadPool("t", idle=5.0)
    seen: list[int] = []
    done = threading.Event()
    pool.submit(lambda: (seen.append(threading.get_ident()), done.set()))
    assert done.wait(5)
    _wait_until(lambda: pool.idle_threads == 1)
    done.clear()
    pool.submit(lambda: (seen.append(threading.get_ident()), done.set()))
    assert done.wait(5)
    assert seen[0] == seen[1]


def test_idle_threads_end():
    pool = ThreadPool("t-idle", idle=0.05)
    started = threading.Event()
    pool.submit(started.set)
    assert started.wait(5)
    _wait_until(lambda: pool.idle_threads == 0 and not any(t.name == "t-idle" for t in threading.enumerate()))
    # and the pool still starts a loop afterwards
    again = threading.Event()
    pool.submit(again.set)
    assert again.wait(5)


def test_loops_submitted_as_threads_time_out_all_run():
    pool = ThreadPool("t-race", idle=0.001)
    ran = []
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            ran.append(1)

    for i in range(2000):
        pool.submit(loop)
        if i % 50 == 0:
            time.sleep(0.002)  # let idle threads time out while others are submitted
    _wait_until(lambda: len(ran) == 2000)


class Echo(PooledActor):
    def on_receive(self, message):
        return message, threading.current_thread().name


def test_pooled_actors_behave_as_pykka_actors():
    refs = [Echo.start() for _ in range(20)]
    try:
        answers = [ref.ask(i, timeout=5) for i, ref in enumerate(refs)]
        assert [a[0] for a in answers] == list(range(20))
        assert all(ref.is_alive() for ref in refs)
    finally:
        for ref in refs:
            ref.stop()
    assert not any(ref.is_alive() for ref in refs)
    again = Echo.start()
    try:
        assert again.ask("x", timeout=5)[0] == "x"
    finally:
        again.stop()
    assert isinstance(again, pykka.ActorRef)


def test_each_actor_class_has_its_own_pool():
    class Other(PooledActor):
        pass

    assert Other.pool is not Echo.pool
    assert Other.pool.name == "Other"
