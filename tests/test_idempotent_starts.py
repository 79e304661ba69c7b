"""Idempotent starts when a start's outcome is uncertain, on a real nats-server.

A start claims its idempotency key, then sends its run. A send that timed out may
have been stored: the claim stays, and a start again with the same key answers with
that run once it is found. A claim whose run never landed is abandoned after
``CLAIM_GRACE`` and the next start takes it over; a start that failed before sending
gives its claim up at once.
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import nats.errors
import pytest

from dagnats.domain.errors import SingletonConflict, Unavailable
from dagnats.infra.engine import admission as adm
from dagnats.infra.wire.names import IDEMPOTENCY_BUCKET

from harness import EngineHarness, FakeWorker

WF = {"name": "idem_uncertain", "steps": [{"id": "a", "task": "iu"}]}


class _LostAck:
    """The control plane's JetStream context whose next publish times out: stored by the
    server first (``lands``) or never sent. Later publishes go through."""

    def __init__(self, h: EngineHarness, lands: bool) -> None:
        self.h, self.js, self.lands = h, h.api.starts.js, lands
        self.run_ids: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.js, name)

    async def publish(self, subject: str, payload: bytes, **kw):
        self.h.api.starts.js = self.js  # once
        if self.lands:
            await self.js.publish(subject, payload, **kw)
        self.run_ids.append(msgspec.json.decode(payload)["run_id"])
        raise nats.errors.TimeoutError


async def _a_start_that_timed_out(h: EngineHarness, key: str, lands: bool, run_id: str | None = None) -> _LostAck:
    """Start a run with ``key`` whose send times out, stored first (``lands``) or not."""
    await h.client.register(WF)
    # No owner takes the start by hand-over (its failures fall back to the inbox anyway):
    # the inbox publish is the send whose outcome is uncertain.
    h.api.starts.partitions = None
    lost = _LostAck(h, lands)
    h.api.starts.js = lost
    with pytest.raises(Unavailable):
        await h.client.start("idem_uncertain", {"key": key}, idempotency_key=key, run_id=run_id)
    return lost


async def _runs_alone(h: EngineHarness, run_id: str) -> dict:
    """Complete ``run_id``'s one task and its run; no other run's task follows."""
    worker = FakeWorker(h.nc, "iu")
    await worker.complete("done")
    final = await h.wait_status(run_id, "completed")
    with pytest.raises(nats.errors.TimeoutError):
        await worker.next(timeout=1.0)
    return final


def test_a_start_whose_ack_was_lost_after_it_landed_is_answered_again_with_its_run(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            lost = await _a_start_that_timed_out(h, "order-1", lands=True)
            again = await h.client.start("idem_uncertain", {"key": "order-1"}, idempotency_key="order-1")
            return lost.run_ids, again, await _runs_alone(h, again)

    sent, again, final = run(body())
    assert sent == [again]  # the retry is the run that landed, not a second one
    assert final["output"] == "done"


def test_a_claim_whose_run_never_landed_is_taken_over_once_abandoned(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            lost = await _a_start_that_timed_out(h, "order-2", lands=False)
            # The claim outlives the failed request (its send may have landed) until abandoned.
            h.api.admission.now = lambda: time.time() + adm.CLAIM_GRACE
            again = await h.client.start("idem_uncertain", {"key": "order-2"}, idempotency_key="order-2")
            same = await h.client.start("idem_uncertain", {"key": "order-2"}, idempotency_key="order-2")
            return lost.run_ids, again, same, await _runs_alone(h, again)

    sent, again, same, final = run(body())
    assert again not in sent and same == again
    assert final["output"] == "done"


def test_the_same_start_again_with_its_run_id_sends_it_at_once(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            frozen = time.time()
            h.api.admission.now = lambda: frozen  # the claim is never abandoned
            lost = await _a_start_that_timed_out(h, "order-8", lands=False, run_id="order-8-run")
            # Its own claim: not waited on (it would be for ever), sent again at once.
            again = await h.client.start(
                "idem_uncertain", {"key": "order-8"}, idempotency_key="order-8", run_id="order-8-run"
            )
            return lost.run_ids, again, await _runs_alone(h, again)

    sent, again, final = run(body())
    assert sent == ["order-8-run"] and again == "order-8-run"
    assert final["output"] == "done"


def test_starts_with_the_key_of_a_start_under_way_answer_with_its_run_once_it_lands(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(WF)
            real_here, gate = h.api.starts.here, asyncio.Event()

            def slow_owner(event):
                held = asyncio.get_running_loop().create_future()

                async def after_the_gate():
                    await gate.wait()
                    held.set_result(await real_here(event))

                asyncio.ensure_future(after_the_gate())
                return held

            h.api.starts.here = slow_owner  # held for less than START_HANDOFF_TIMEOUT
            starts = [
                asyncio.ensure_future(h.client.start("idem_uncertain", {"n": 3}, idempotency_key="order-3"))
                for _ in range(20)
            ]
            await asyncio.sleep(0.3)  # all twenty have claimed or found the claim
            assert not any(s.done() for s in starts)  # the others wait for the first one's run
            gate.set()
            answers = await asyncio.gather(*starts)
            await _runs_alone(h, answers[0])
            return answers

    answers = run(body())
    assert len(set(answers)) == 1


def test_a_start_refused_before_sending_gives_its_key_up_at_once(nats_url, run):
    wf = {**WF, "name": "idem_single", "singleton": {"mode": "skip"}}

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            holder = await h.client.start("idem_single", {"n": 1})
            with pytest.raises(SingletonConflict):
                await h.client.start("idem_single", {"n": 4}, idempotency_key="order-4")
            worker = FakeWorker(h.nc, "iu")
            await worker.complete("first")
            await h.wait_status(holder, "completed")
            # Not answered with the refused start's run id, and not kept waiting for it.
            started = await h.client.start("idem_single", {"n": 4}, idempotency_key="order-4")
            await worker.complete("second")
            return holder, started, await h.wait_status(started, "completed")

    holder, started, final = run(body())
    assert started != holder and final["output"] == "second"


def test_a_start_too_slow_to_admit_gives_its_key_up_and_says_so(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(WF)
            clock = iter([0.0, adm.SEND_BY])  # claimed at 0; asked whether it may send at SEND_BY
            h.api.admission.now = lambda: time.time() + next(clock, adm.SEND_BY)
            with pytest.raises(Unavailable, match="took too long to admit"):
                await h.client.start("idem_uncertain", {"n": 5}, idempotency_key="order-5")
            h.api.admission.now = time.time
            started = await h.client.start("idem_uncertain", {"n": 5}, idempotency_key="order-5")
            await FakeWorker(h.nc, "iu").complete("done")
            return await h.wait_status(started, "completed")

    assert run(body())["output"] == "done"


def test_a_claim_from_before_claims_were_timed_is_taken_over_when_its_run_never_started(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(WF)
            kv = await h.nc.jetstream().key_value(IDEMPOTENCY_BUCKET)
            key = adm._digest("idem_uncertain", "order-6")
            await kv.put(key, b"ghost-run")  # a bare run id whose start never landed
            started = await h.client.start("idem_uncertain", {"n": 6}, idempotency_key="order-6")
            claim = json.loads((await kv.get(key)).value)
            await FakeWorker(h.nc, "iu").complete("done")
            return started, claim, await h.wait_status(started, "completed")

    started, claim, final = run(body())
    assert started != "ghost-run" and claim["run_id"] == started
    assert final["output"] == "done"


def test_a_key_whose_run_was_stored_answers_with_it_even_once_the_run_is_deleted(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(WF)
            first = await h.client.start("idem_uncertain", {"n": 7}, idempotency_key="order-7")
            await FakeWorker(h.nc, "iu").complete("done")
            await h.wait_status(first, "completed")
            await h.client.delete(first)
            h.api.admission.now = lambda: time.time() + 2 * adm.CLAIM_GRACE
            return first, await h.client.start("idem_uncertain", {"n": 7}, idempotency_key="order-7")

    first, again = run(body())
    assert again == first
