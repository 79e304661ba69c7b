"""Waiting for runs at scale: no JetStream consumer per wait, every wait returns.

A program that starts runs and waits for each, hundreds in flight from one
client, must see every run finish, and the server must hold no consumer per
wait (nats-server caps a stream at 1,000 consumers).
"""

from __future__ import annotations

import asyncio

from dagnats.domain.errors import InvalidRunState
from dagnats.infra.client import Client
from dagnats.infra.wire.names import HISTORY_STREAM, INBOX_STREAM
from dagnats.infra.wire.notices import await_run
from dagnats.infra.worker import TaskContext, Worker

from harness import EngineHarness, FakeWorker

ONE_STEP = {"name": "one-step", "steps": [{"id": "a", "task": "w-noop"}]}


def counted_reads(client: Client) -> list[str]:
    """The run ids ``client.status`` reads from now on (a wait reads through it)."""
    reads: list[str] = []
    real_status = client.status

    async def status(run_id: str) -> dict:
        reads.append(run_id)
        return await real_status(run_id)

    client.status = status  # type: ignore[method-assign]
    return reads


async def _consumer_counts(js) -> dict[str, int]:
    return {name: (await js.stream_info(name)).state.consumer_count for name in (HISTORY_STREAM, INBOX_STREAM)}


def test_1200_starts_and_waits_with_300_in_flight_all_return_and_hold_no_consumers(nats_url, run):
    total, in_flight = 1200, 300
    worker = Worker(nats_url, max_concurrent=100)

    @worker.task("w-noop")
    async def noop(ctx: TaskContext, n: int) -> int:
        return n + 1

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            await worker.start()
            js = h.nc.jetstream()
            baseline, peaks, done = await _consumer_counts(js), [], asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    peaks.append(await _consumer_counts(js))
                    await asyncio.sleep(0.05)

            slots = asyncio.Semaphore(in_flight)

            async def start_and_wait(n: int) -> dict:
                async with slots:
                    run_id = await h.client.start("one-step", n)
                    return await h.client.wait(run_id, timeout=120)

            sampler = asyncio.create_task(sample())
            try:
                views = await asyncio.gather(*(start_and_wait(n) for n in range(total)))
            finally:
                done.set()
                await sampler
                await worker.stop()
            return baseline, peaks, views

    baseline, peaks, views = run(body(), timeout=240)
    assert [v["status"] for v in views] == ["completed"] * total
    assert sorted(v["output"] for v in views) == list(range(1, total + 1))
    assert peaks and all(p == baseline for p in peaks), (baseline, max(peaks, key=lambda p: sum(p.values())))


def test_a_wait_on_a_finished_run_returns_at_once_and_a_step_wait_returns_when_its_step_ends(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "two-steps",
                    "steps": [{"id": "a", "task": "wa"}, {"id": "b", "task": "wb", "depends_on": ["a"]}],
                }
            )
            run_id = await h.client.start("two-steps")
            step_wait = asyncio.create_task(h.client.wait(run_id, step="a", timeout=30))
            await FakeWorker(h.nc, "wa").complete("A")
            after_a = await step_wait
            await FakeWorker(h.nc, "wb").complete("B")
            first = await h.client.wait(run_id, timeout=30)
            again = await h.client.wait(run_id, timeout=5)
            return after_a, first, again

    after_a, first, again = run(body())
    assert after_a["steps"]["a"]["status"] == "completed"
    assert first["status"] == again["status"] == "completed" and again["output"] == "B"


def test_a_wait_whose_notices_are_lost_still_returns(nats_url, run):
    # Notices are core NATS: an engine killed between its append and its notice sends
    # none. A waiter re-reads the run after a quiet spell; here no notice is ever sent.
    async def body():
        async with EngineHarness(nats_url) as h:
            h.engine.reader._announce = lambda run_id, data: None
            await h.client.register(ONE_STEP)
            run_id = await h.client.start("one-step", 1)
            waiting = asyncio.create_task(
                await_run(
                    h.nc, run_id, lambda: h.client.status(run_id), lambda v: v["status"] == "completed", recheck=0.2
                )
            )
            await FakeWorker(h.nc, "w-noop").complete(2)
            return await asyncio.wait_for(waiting, 10)

    assert run(body())["status"] == "completed"


def test_cancel_says_how_the_run_ended_when_it_completes_first(nats_url, run):
    async def body():
        outcomes = []
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            for n in range(5):
                run_id = await h.client.start("one-step", n)
                worker = FakeWorker(h.nc, "w-noop")
                task, msg = await worker.next()
                await worker.report(task, "step.completed", "done")  # completes, racing the cancel
                try:
                    answer = await h.client.cancel(run_id)
                except InvalidRunState as err:  # already recorded as completed
                    answer = {"cancelled": False, "status": err.status}
                await msg.ack()
                final = await h.client.wait(run_id, timeout=10)
                outcomes.append((answer, final["status"]))
        return outcomes

    for answer, final in run(body(), timeout=60):
        assert answer["status"] == final
        assert answer["cancelled"] == (final == "cancelled")


CHAIN = {
    "name": "chain-of-three",
    "steps": [
        {"id": "a", "task": "w-noop"},
        {"id": "b", "task": "w-noop", "depends_on": ["a"]},
        {"id": "c", "task": "w-noop", "depends_on": ["b"]},
    ],
}


def test_a_wait_reads_the_run_once_and_gets_its_end_with_the_last_notice(nats_url, run):
    # A waiter for a run it did not start itself (here: another client) reads it only
    # when it starts waiting (answered from the live actor's state, with no history read),
    # and the notice of the run's end carries the view a read would return.
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN)
            store, reads, views = h.engine.reader.store, [], []
            for name in ("read_after", "load"):
                real = getattr(store, name)

                def counted(*args, _real=real, _name=name):
                    reads.append(_name)
                    return _real(*args)

                setattr(store, name, counted)
            waiter = await Client(nats_url).connect()
            real_status = waiter.status

            async def status(run_id):
                views.append(await real_status(run_id))
                return views[-1]

            waiter.status = status
            results = []
            for n in range(3):
                run_id = await h.client.start("chain-of-three", n)
                views.clear()
                reads.clear()
                waiting = asyncio.create_task(waiter.wait(run_id, timeout=30))
                while not views:
                    await asyncio.sleep(0.01)
                for value in (n + 1, n + 2, n + 3):
                    await FakeWorker(h.nc, "w-noop").complete(value)
                final = await waiting
                results.append((final["status"], final["output"], len(views), list(reads)))
                assert final == await real_status(run_id)  # what a read returns, from memory
            await waiter.close()
            return results

    assert run(body(), timeout=90) == [("completed", n + 3, 1, []) for n in range(3)]


def test_a_run_whose_view_is_too_large_for_a_notice_is_read_at_its_end(nats_url, run):
    big = "x" * 20_000

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            run_id = await h.client.start("one-step", 1)
            reads = counted_reads(h.client)
            waiting = asyncio.create_task(h.client.wait(run_id, timeout=30))
            await FakeWorker(h.nc, "w-noop").complete(big)
            final = await waiting
            return final["output"] == big, len(reads)

    # The client started the run: its wait reads nothing until the end notice, which
    # comes without the view; then it reads once.
    assert run(body()) == (True, 1)


def test_a_client_waits_for_a_run_it_started_without_reading_it(nats_url, run):
    """``Client.start`` listens for the run's end before it sends the start: the wait
    reads nothing (the end notice brings the view), and the start was handed straight to
    the run's owner (its client-made id is new: the inbox stored the worker's two reports,
    not the start; counted by the stream's last sequence, as the reports' acknowledgements
    may still be on their way when the wait returns). Past the time a started run's
    subscription is kept, a wait reads the run as any other."""

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            js = h.nc.jetstream()
            reads = counted_reads(h.client)
            run_id = await h.client.start("one-step", 1)
            await FakeWorker(h.nc, "w-noop").complete(2)
            first = await h.client.wait(run_id, timeout=30)
            quiet = (len(reads), (await js.stream_info(INBOX_STREAM)).state.last_seq)
            h.client._started.keep = 0.0  # kept for no time: the next wait reads
            late = await h.client.start("one-step", 5)
            await FakeWorker(h.nc, "w-noop").complete(6)
            await h.client.start("one-step", 7)  # expires what the client kept
            second = await h.client.wait(late, timeout=30)
            return first, quiet, second, len(reads)

    first, quiet, second, reads = run(body())
    assert (first["status"], first["output"]) == ("completed", 2)
    assert quiet == (0, 2)  # no read; step.started and step.completed stored, no start
    assert (second["status"], second["output"]) == ("completed", 6)
    assert reads == 1


def test_a_start_answered_with_an_earlier_run_is_waited_for_by_reading_it(nats_url, run):
    """A start whose idempotency key names a run that already ended is answered with that
    run: the subscription made for the new id is dropped and the wait reads the run (its
    end notice went out before this client listened)."""

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            first = await h.client.start("one-step", 1, idempotency_key="order-1")
            await FakeWorker(h.nc, "w-noop").complete(2)
            await h.client.wait(first, timeout=30)
            again = await h.client.start("one-step", 1, idempotency_key="order-1")
            view = await h.client.wait(again, timeout=5)
            return first, again, view, len(h.client._started._subs)

    first, again, view, kept = run(body())
    assert again == first and view["output"] == 2
    assert kept == 0


def test_a_deleted_run_is_not_served_from_memory(nats_url, run):
    from dagnats.domain.errors import RunNotFound

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            run_id = await h.client.start("one-step", 1)
            await FakeWorker(h.nc, "w-noop").complete(2)
            await h.client.wait(run_id, timeout=10)
            await h.client.delete(run_id)
            try:
                await h.client.status(run_id)
            except RunNotFound:
                return "not found"
            return "still served"

    assert run(body()) == "not found"


def test_a_run_waiter_hears_only_the_end_and_a_step_waiter_each_record(nats_url, run):
    """Only the end of a run is announced (on ``.end``): a waiter for the run's end is
    not woken by the records before it. A step waiter listens to the run's history
    subject and reads on the record about its step. ``recheck`` is long, so only a
    notice or a record can wake either waiter."""

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN)
            run_id = await h.client.start("chain-of-three", 0)
            heard: dict[str, list[str]] = {"end": [], "all": []}
            announced: dict[str, int] = {}

            async def count(msg):
                kind = msg.subject.rsplit(".", 1)[1]
                announced[kind] = announced.get(kind, 0) + 1

            spy = await h.nc.subscribe(f"dagnats.run.{run_id}.*", cb=count)

            def reader(kind: str):
                async def read():
                    heard[kind].append("read")
                    return await h.client.status(run_id)

                return read

            def step_done(view):
                return view["steps"]["a"]["status"] == "completed"

            def run_done(view):
                return view["status"] == "completed"

            run_wait = asyncio.create_task(await_run(h.nc, run_id, reader("end"), run_done, recheck=600))
            step_wait = asyncio.create_task(await_run(h.nc, run_id, reader("all"), step_done, step="a", recheck=600))
            while len(heard["end"]) < 1 or len(heard["all"]) < 1:
                await asyncio.sleep(0.01)
            await FakeWorker(h.nc, "w-noop").complete(1)
            step_view = await asyncio.wait_for(step_wait, 30)  # woken by step a's notice
            await FakeWorker(h.nc, "w-noop").complete(2)
            await FakeWorker(h.nc, "w-noop").complete(3)
            run_view = await asyncio.wait_for(run_wait, 30)
            await h.nc.flush()
            await spy.unsubscribe()
            return step_view, run_view, heard, announced

    step_view, run_view, heard, announced = run(body(), timeout=90)
    assert step_view["steps"]["a"]["output"] == 1
    assert run_view["status"] == "completed" and run_view["output"] == 3
    assert heard["end"] == ["read"]  # read once; its end came with the view
    assert len(heard["all"]) >= 2  # at the start, then on the record about step a
    assert announced == {"end": 1}  # all a waiter for the run's end hears; nothing else


def test_runs_started_beyond_the_kept_subscriptions_are_waited_for_by_reading_them(nats_url, run):
    """A client keeps at most ``most`` started runs' end subscriptions: starting more before
    waiting drops the oldest (unsubscribed), and waiting for those reads the run; every
    wait still returns its run's end."""

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE_STEP)
            h.client._started.most = 2
            reads = counted_reads(h.client)

            def listening() -> list[str]:
                return sorted(sub.subject for sub in h.client.nc._subs.values() if sub.subject.endswith(".end"))

            run_ids = [await h.client.start("one-step", n) for n in range(5)]
            after_starts = listening()
            worker = FakeWorker(h.nc, "w-noop")
            for n in range(5):
                await worker.complete(n + 10)
            views = [await h.client.wait(run_id, timeout=30) for run_id in run_ids]
            return views, len(reads), run_ids, after_starts, listening()

    views, reads, run_ids, after_starts, after_waits = run(body())
    assert sorted(v["output"] for v in views) == [10, 11, 12, 13, 14]
    assert reads == 3  # the three oldest were no longer listened for
    assert after_starts == sorted(f"dagnats.run.{r}.end" for r in run_ids[3:])  # the two newest
    assert after_waits == []
