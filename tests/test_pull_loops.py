"""The engine's pull loops fetch through `pulled`: they outlive failures and end when
stopped or when their connection is closed for good (never spinning on it)."""

from __future__ import annotations

import asyncio
import logging
import secrets

import nats
from nats.js import api

from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.engine.trace_projector import TraceProjector
from dagnats.infra.wire.reading import pulled

log = logging.getLogger("test.pull")


async def _stream_with_consumer(url: str):
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"PULL_{secrets.token_hex(4)}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    sub = await js.pull_subscribe(f"{name.lower()}.>", durable="loop", stream=name)
    return nc, js, name, sub


def test_pulled_gives_messages_nothing_on_a_quiet_second_and_none_once_closed(shared_url, run):
    async def body():
        nc, js, name, sub = await _stream_with_consumer(shared_url)
        await js.publish(f"{name.lower()}.a", b"1")
        got = await pulled(sub, 10, "test fetch", log)
        quiet = await pulled(sub, 1, "test fetch", log)
        await js.delete_stream(name)
        await nc.close()
        closed = await pulled(sub, 1, "test fetch", log)
        return [m.data for m in got or []], quiet, closed

    got, quiet, closed = run(body())
    assert got == [b"1"]
    assert quiet == []
    assert closed is None


async def _running_projector(url: str):
    """A trace projector following the history on its own connection, a moment after its start."""
    nc = await nats.connect(url)
    await ensure_resources(nc.jetstream())
    projector = TraceProjector(nc.jetstream(), lambda spans: True)
    await projector.start()
    await asyncio.sleep(0.1)
    return nc, projector


def test_a_projector_whose_connection_is_closed_ends_its_loop_instead_of_spinning(nats_url, run, caplog):
    """Before, a projector outliving its connection (its cancellation lost, or the
    connection closed first) fetched from it twice a second for ever, and the end of
    the event loop waited on it for ever."""

    async def body():
        nc, projector = await _running_projector(nats_url)
        await nc.close()
        await asyncio.sleep(1.2)
        ended_by_itself = projector._task is not None and projector._task.done()
        await projector.stop()
        return ended_by_itself

    with caplog.at_level(logging.WARNING):
        assert run(body())
    assert not [r for r in caplog.records if "fetch failed" in r.getMessage()]


def test_a_stopped_projector_has_ended_its_loop(nats_url, run):
    async def body():
        nc, projector = await _running_projector(nats_url)
        await projector.stop()
        await nc.close()
        return projector._task is not None and projector._task.done()

    assert run(body())
