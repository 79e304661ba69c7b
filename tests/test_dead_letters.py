"""Dead letters against a real nats-server: exhausted deliveries, permanent failures, replay."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.domain.errors import DeadLetterNotFound, InvalidIdentifier, ReplayRefused
from dagnats.infra.wire.names import TASK_STREAM
from dagnats.infra.wire.reading import stored_messages

from harness import EngineHarness, FakeWorker


def _one_step(name: str, task: str, **step: object) -> dict:
    return {"name": name, "steps": [{"id": "work", "task": task, **step}]}


async def _wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _exhaust(h: EngineHarness, task: str, deliveries: int = 2) -> None:
    """A worker that takes the task and never settles it: NAK until max_deliver is reached."""
    sub = await h.nc.jetstream().pull_subscribe(
        f"task.{task}.*",
        durable=f"workers-{task}",
        stream=TASK_STREAM,
        config=api.ConsumerConfig(ack_wait=30, max_deliver=deliveries),
    )
    for _ in range(deliveries):
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].nak()
    # The server notices the exhausted message (and sends the advisory) when it next
    # looks for one to deliver, as a worker's fetch loop keeps asking it to.
    with contextlib.suppress(NatsTimeoutError):
        await sub.fetch(1, timeout=0.5)
    # Gone, so the next attempt goes to the next worker (a work queue allows one consumer).
    await sub.unsubscribe()
    await h.nc.jetstream().delete_consumer(TASK_STREAM, f"workers-{task}")


async def _queued_tasks(h: EngineHarness, task: str, run_id: str) -> int:
    return len([m async for m in stored_messages(h.nc.jetstream(), TASK_STREAM, f"task.{task}.{run_id}")])


def test_exhausted_deliveries_dead_letter_the_task_and_fail_the_step(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_one_step("dlq-exhaust", "dlq_poison"))
            run_id = await h.client.start("dlq-exhaust", {"x": 1})
            await _exhaust(h, "dlq_poison")
            final = await h.wait_status(run_id, "failed")
            entries = await _wait_for(lambda: h.client.dlq_list(run_id=run_id), what="a dead letter")
            left = await _queued_tasks(h, "dlq_poison", run_id)
            shown = await h.client.dlq_show(entries[0]["seq"])
            return final, entries, left, shown

    final, entries, left, shown = run(body())
    assert final["steps"]["work"]["status"] == "failed"
    assert "max_deliveries" in final["steps"]["work"]["error"]
    assert len(entries) == 1  # the run's own entry for the same attempt is a duplicate
    entry = entries[0]
    assert (entry["task"], entry["step_id"], entry["reason"], entry["attempts"]) == (
        "dlq_poison",
        "work",
        "max_deliveries",
        1,
    )
    assert entry["deliveries"] == 2 and entry["workflow"] == "dlq-exhaust"
    assert left == 0, "the exhausted task must not stay in the work queue"
    assert shown["body"]["input"] == {"x": 1} and shown["body"]["step_id"] == "work"


def test_exhausted_deliveries_go_through_the_retry_policy(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            retry = {"max_attempts": 2, "initial_delay": "10ms", "strategy": "fixed"}
            await h.client.register(_one_step("dlq-retry", "dlq_flaky", retry=retry))
            run_id = await h.client.start("dlq-retry")
            await _exhaust(h, "dlq_flaky")
            # The next attempt is a new message: it starts with a fresh delivery count.
            task = await FakeWorker(h.nc, "dlq_flaky").complete("fine")
            return task, await h.wait_status(run_id, "completed")

    task, final = run(body())
    assert task.attempt == 2
    assert final["steps"]["work"]["attempts"] == 2


def test_permanent_failure_is_dead_lettered_and_replay_completes_the_run(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_one_step("dlq-perm", "dlq_perm"))
            run_id = await h.client.start("dlq-perm", "in")
            worker = FakeWorker(h.nc, "dlq_perm")
            await worker.fail("bad input", "permanent")
            await h.wait_status(run_id, "failed")
            [entry] = await _wait_for(lambda: h.client.dlq_list(run_id=run_id), what="a dead letter")
            replayed = await h.client.dlq_replay(entry["seq"], by="test")
            again = await worker.complete("fixed")
            final = await h.wait_status(run_id, "completed")
            gone = await _wait_for(lambda: _empty(h.client.dlq_list(run_id=run_id)), what="the dead letter discarded")
            events = await h.client.events(run_id)
            with pytest.raises(DeadLetterNotFound) as refused:
                await h.client.dlq_replay(entry["seq"])
            return entry, replayed, again, final, gone, events, refused.value

    entry, replayed, again, final, gone, events, refused = run(body())
    assert (entry["reason"], entry["error"]) == ("non_retriable", "bad input")
    assert replayed == {
        "seq": entry["seq"],
        "run_id": entry["run_id"],
        "step_id": "work",
        "replayed": True,
        "attempt": 2,
    }
    assert again.attempt == 2 and again.input == "in"
    assert final["output"] == "fixed" and not final["error"]
    assert gone
    replay_events = [e for e in events if e["type"] == "step.replayed"]
    assert replay_events and replay_events[0]["payload"] == {"by": "test", "dead_letter_seq": entry["seq"]}
    # The entry went once the replayed step completed: nothing left to replay.
    assert refused.seq == entry["seq"]


async def _empty(coro) -> bool:
    return not await coro


def test_replay_of_a_completed_step_is_refused_with_the_reason(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            retry = {"max_attempts": 2, "initial_delay": "10ms", "strategy": "fixed"}
            await h.client.register(_one_step("dlq-done", "dlq_done", retry=retry))
            run_id = await h.client.start("dlq-done")
            await _exhaust(h, "dlq_done")
            await FakeWorker(h.nc, "dlq_done").complete("ok")
            await h.wait_status(run_id, "completed")
            [entry] = await h.client.dlq_list(run_id=run_id)
            with pytest.raises(ReplayRefused) as refused:
                await h.client.dlq_replay(entry["seq"])
            many = await h.client.dlq_replay(run_id=run_id)
            discarded = await h.client.dlq_discard(entry["seq"])
            after = await h.client.dlq_list(run_id=run_id)
            return entry, refused.value, many, discarded, after

    entry, refused, many, discarded, after = run(body())
    assert "already completed" in str(refused) and refused.seq == entry["seq"]
    assert many["replayed"] == [] and "already completed" in many["refused"][0]["reason"]
    assert discarded == {"seq": entry["seq"], "discarded": True}
    assert after == []


def test_unknown_sequences_and_hostile_ids_get_clear_errors(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            errors = []
            for call in (
                h.client.dlq_show(10**9),
                h.client.dlq_replay(10**9),
                h.client.dlq_discard(10**9),
                h.client.dlq_list(run_id="a.>"),
                h.client.dlq_list(workflow="*"),
                h.client.dlq_replay(run_id="x y"),
            ):
                try:
                    await call
                except Exception as err:  # noqa: BLE001 - collected and checked below
                    errors.append(err)
            return errors

    errors = run(body())
    assert [type(e) for e in errors[:3]] == [DeadLetterNotFound] * 3
    assert "no dead letter 1000000000" in str(errors[0])
    assert all(isinstance(e, InvalidIdentifier) for e in errors[3:]), errors[3:]


def test_replay_by_workflow_and_time_range(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_one_step("dlq-range", "dlq_range"))
            worker = FakeWorker(h.nc, "dlq_range")
            before = datetime.now(UTC) - timedelta(seconds=1)
            runs = []
            for n in range(2):
                run_id = await h.client.start("dlq-range", n)
                await worker.fail("nope", "permanent")
                await h.wait_status(run_id, "failed")
                runs.append(run_id)
            await _wait_for(lambda: _count(h.client.dlq_list(workflow="dlq-range"), 2), what="two dead letters")
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            none = await h.client.dlq_replay(workflow="dlq-range", since=later)
            answer = await h.client.dlq_replay(workflow="dlq-range", since=before.isoformat(), until=later)
            for _ in runs:
                await worker.complete("ok")
            finals = [await h.wait_status(r, "completed") for r in runs]
            return runs, none, answer, finals

    runs, none, answer, finals = run(body())
    assert none == {"replayed": [], "refused": []}
    assert sorted(r["run_id"] for r in answer["replayed"]) == sorted(runs)
    assert [f["status"] for f in finals] == ["completed", "completed"]


async def _count(coro, n: int) -> bool:
    return len(await coro) >= n
