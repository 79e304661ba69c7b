"""The loop serve and the workers run on (``infra/event_loop.py``): uvloop's, unless
``DAGNATS_EVENT_LOOP=asyncio`` asks for the standard library's."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from dagnats.infra import event_loop


async def _the_loop() -> asyncio.AbstractEventLoop:
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def test_serve_and_workers_run_on_uvloop_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.loop_factory() is uvloop.new_event_loop
    ran_on = event_loop.run(_the_loop())
    assert isinstance(ran_on, uvloop.Loop) and ran_on.is_closed()  # closed after, as asyncio.run does

    monkeypatch.setenv(event_loop.ENV, " AsyncIO ")
    assert event_loop.loop_factory() is None
    standard = event_loop.run(_the_loop())
    assert not isinstance(standard, uvloop.Loop) and isinstance(standard, asyncio.BaseEventLoop)


def test_what_the_coroutine_raises_comes_out_of_run():
    async def fails() -> None:
        raise LookupError("from the loop")

    with pytest.raises(LookupError, match="from the loop"):
        event_loop.run(fails())
