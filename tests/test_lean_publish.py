"""LeanJetStream answers a publish exactly as nats-py's JetStreamContext does."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from dagnats.infra.wire.lean import LeanJetStream, handle_at_once, publish_now

STREAM = "LEAN_TEST"


def test_acks_duplicates_and_sequences_match_the_stock_context(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        try:
            stock, lean = nc.jetstream(), LeanJetStream(nc)
            await stock.add_stream(StreamConfig(name=STREAM, subjects=["lean.>"]))
            acks = await asyncio.gather(
                *(lean.publish(f"lean.{n}", b"x", headers={"Nats-Msg-Id": f"m{n}"}) for n in range(200))
            )
            again = await lean.publish("lean.0", b"x", headers={"Nats-Msg-Id": "m0"})
            stock_ack = await stock.publish("lean.z", b"y")
            named = await lean.publish("lean.w", b"z", stream=STREAM)
            return acks, again, stock_ack, named
        finally:
            await nc.close()

    acks, again, stock_ack, named = run(body())
    assert sorted(a.seq for a in acks) == list(range(1, 201))
    assert {a.stream for a in acks} == {STREAM} and not any(a.duplicate for a in acks)
    assert again.duplicate and again.seq in range(1, 201)
    assert (stock_ack.seq, named.seq, named.stream) == (201, 202, STREAM)


def test_a_wrong_last_sequence_raises_the_servers_error_code(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        try:
            lean = LeanJetStream(nc)
            await lean.add_stream(StreamConfig(name=STREAM, subjects=["lean.>"]))
            await lean.publish("lean.a", b"1")
            with pytest.raises(APIError) as wrong:
                await lean.publish("lean.a", b"2", headers={"Nats-Expected-Last-Subject-Sequence": "7"})
            with pytest.raises(APIError) as other_stream:
                await lean.publish("lean.a", b"3", stream="NOT_THIS_ONE")
            return wrong.value.err_code, other_stream.value.err_code
        finally:
            await nc.close()

    wrong, other = run(body())
    assert wrong == 10071  # wrong last sequence: what the history's optimistic append relies on
    assert other == 10060  # expected stream does not match


def test_a_subject_no_stream_takes_and_a_silent_responder_fail_clearly(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        try:
            lean = LeanJetStream(nc)
            with pytest.raises(NoStreamResponseError):
                await lean.publish("nobody.stores.this", b"x")

            async def silent(msg) -> None:
                return None

            await nc.subscribe("silent.responder", cb=silent)
            with pytest.raises(NatsTimeoutError):
                await lean.publish("silent.responder", b"x", timeout=0.2)
            return lean.lean.waiting()
        finally:
            await nc.close()

    assert run(body()) == 0  # nothing left waiting


def test_requests_with_different_timeouts_each_expire_after_their_own_and_answered_ones_do_not(nats_url, run):
    """Expiries are swept, not timed one by one: each unanswered request still fails no
    sooner than its own timeout and within a sweep of it, also when a longer one was
    waiting first (the sweep comes sooner for it), answered ones are untouched, and
    nothing stays waiting or queued for expiry once the last is due."""
    from dagnats.infra.wire.lean import SWEEP_EVERY, LeanRequests

    async def body():
        nc = await nats.connect(nats_url)
        try:
            requests = LeanRequests(nc)

            async def echo(msg) -> None:
                await msg.respond(msg.data)

            async def silent(msg) -> None:
                return None

            await nc.subscribe("sweep.echo", cb=echo)
            await nc.subscribe("sweep.silent", cb=silent)

            async def one(n: int):
                timeout = (1.5, 0.1, 0.3)[n % 3]  # the first request has the longest
                subject = "sweep.echo" if n % 4 == 0 else "sweep.silent"
                began = asyncio.get_running_loop().time()
                try:
                    answer = (await requests.request(subject, str(n).encode(), timeout=timeout)).data
                except NatsTimeoutError:
                    answer = None
                return n, timeout, answer, asyncio.get_running_loop().time() - began

            results = await asyncio.gather(*(one(n) for n in range(60)))
            await asyncio.sleep(SWEEP_EVERY * 2)
            return results, requests.waiting(), requests._deadlines, requests._sweep_at
        finally:
            await nc.close()

    results, waiting, deadlines, sweep_at = run(body())
    for n, timeout, answer, took in results:
        if n % 4 == 0:
            assert answer == str(n).encode() and took < timeout
        else:
            # No sooner than its timeout (to the float rounding of the loop's clock: uvloop's is
            # read once per pass, so the two readings can differ by exactly the timeout), within
            # a sweep of it, and a loaded machine.
            assert answer is None and timeout - 1e-9 <= took < timeout + 0.05 + 0.4
    assert waiting == 0 and deadlines == {} and sweep_at is None


def test_a_subscription_handled_at_once_gets_every_message_in_order_and_never_counts_as_slow(nats_url, run):
    """``handle_at_once``: each message goes to the handler as the connection reads it. Far
    more bytes than the subscription's pending limit pass without a slow-consumer error
    (nothing stays counted as pending), and a handler that raises is logged, not fatal to
    the connection's reader."""

    async def body():
        errors: list[Exception] = []

        async def error_cb(err: Exception) -> None:
            errors.append(err)

        nc = await nats.connect(nats_url, error_cb=error_cb)
        try:
            got: list[bytes] = []

            def handle(msg) -> None:
                if msg.data == b"boom":
                    raise ValueError("a handler failed")
                got.append(msg.data)

            sub = await nc.subscribe("at-once.>", pending_bytes_limit=4096)
            handle_at_once(sub, handle)
            for n in range(300):
                await nc.publish(f"at-once.{n}", b"boom" if n == 7 else f"{n:0100d}".encode())
            await nc.flush()
            for _ in range(100):
                if len(got) == 299:
                    break
                await asyncio.sleep(0.02)
            return got, errors, sub.pending_bytes, nc.is_connected
        finally:
            await nc.close()

    got, errors, pending, connected = run(body())
    assert got == [f"{n:0100d}".encode() for n in range(300) if n != 7]
    assert errors == [] and pending == 0 and connected


def test_a_message_queued_at_once_arrives_as_nats_py_would_send_it_and_falls_back_when_it_cannot(nats_url, run):
    """``publish_now`` writes the protocol line nats-py would (subject, reply, headers with
    their line breaks replaced, payload, in order with nats-py's own publishes); it leaves
    to ``nc.publish`` what it cannot queue: an oversized payload, a closed connection."""

    async def body():
        nc = await nats.connect(nats_url)
        seen: list = []
        sub = await nc.subscribe("now.>")
        handle_at_once(sub, seen.append)
        queued = [
            publish_now(nc, "now.a", b"one", reply="back.1", headers={"Nats-Msg-Id": "m1", "X-Odd": "a\r\nb"}),
            publish_now(nc, "now.b", b""),
        ]
        await nc.publish("now.c", b"three", headers={"Nats-Msg-Id": "m3"})
        queued.append(publish_now(nc, "now.d", b"four"))
        too_large = publish_now(nc, "now.e", b"x" * (nc.max_payload + 1))
        await nc.flush()
        for _ in range(100):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.01)
        await nc.close()
        closed = publish_now(nc, "now.f", b"late")
        return queued, too_large, closed, seen

    queued, too_large, closed, seen = run(body())
    assert queued == [True, True, True] and not too_large and not closed
    assert [(m.subject, m.reply, m.data) for m in seen] == [
        ("now.a", "back.1", b"one"),
        ("now.b", "", b""),
        ("now.c", "", b"three"),
        ("now.d", "", b"four"),
    ]
    assert seen[0].headers == {"Nats-Msg-Id": "m1", "X-Odd": "a  b"} and seen[2].headers == {"Nats-Msg-Id": "m3"}


def test_the_lean_read_of_a_stored_message_agrees_with_nats_pys_get_msg(nats_url, run):
    """``next_stored`` (what ``stored_messages`` walks with) answers as ``get_msg(next=True)``:
    subject, sequence, data, headers and time; None past the last message, and for a stream
    that does not exist (nats-py's NotFoundError either way, which ended the walk)."""
    from dagnats.infra.wire.reading import next_stored, stored_messages

    async def body():
        nc = await nats.connect(nats_url)
        try:
            lean = LeanJetStream(nc)
            await lean.add_stream(StreamConfig(name="READ_TEST", subjects=["read.>"]))
            await lean.publish("read.a", b"one", headers={"Nats-Msg-Id": "r1", "Traceparent": "00-ab-cd-01"})
            await lean.publish("read.b", b"")
            await lean.publish("read.a", b'{"two":2}')
            pairs = []
            for seq in (1, 2, 3):
                mine = await next_stored(lean, "READ_TEST", "read.a", seq)
                theirs = await lean.get_msg("READ_TEST", seq=seq, subject="read.a", next=True)
                pairs.append((mine, theirs))
            past = await next_stored(lean, "READ_TEST", "read.a", 4)
            walked = [m.data async for m in stored_messages(lean, "READ_TEST", "read.>")]
            missing = await next_stored(lean, "NO_SUCH_STREAM", "read.a", 1)
            return pairs, past, walked, missing
        finally:
            await nc.close()

    pairs, past, walked, missing = run(body())
    for mine, theirs in pairs:
        assert (mine.subject, mine.seq, mine.data, mine.time) == (theirs.subject, theirs.seq, theirs.data, theirs.time)
        assert mine.headers == theirs.headers
    assert pairs[0][0].headers == {"Nats-Msg-Id": "r1", "Traceparent": "00-ab-cd-01"} and pairs[0][0].data == b"one"
    assert [p[0].seq for p in pairs] == [1, 3, 3] and past is None and missing is None
    assert walked == [b"one", None, b'{"two":2}']


def test_a_lean_ack_acknowledges_a_pulled_message_once_and_refuses_what_nats_py_refuses(nats_url, run):
    from nats.errors import MsgAlreadyAckdError

    from dagnats.infra.wire.lean import ack

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = LeanJetStream(nc)
            await js.add_stream(StreamConfig(name="ACK_TEST", subjects=["ack.>"]))
            for n in range(3):
                await js.publish(f"ack.{n}", b"x")
            sub = await js.pull_subscribe("ack.>", durable="acker")
            msgs = await sub.fetch(3)
            for msg in msgs:
                await ack(msg)
            with pytest.raises(MsgAlreadyAckdError):
                await ack(msgs[0])  # already acknowledged
            await nc.flush()
            info = await js.consumer_info("ACK_TEST", "acker")
            return info.num_ack_pending, info.num_pending, info.delivered.consumer_seq
        finally:
            await nc.close()

    assert run(body()) == (0, 0, 3)
