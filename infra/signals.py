"""Receiving a signal: watch one key of the ``signals`` bucket until it holds a value.

The control plane (``dagnats run signal ID NAME DATA``) puts the signal's JSON
at ``<run>.<name>``. A waiting handler watches that one key (a KV watch: the
server pushes the key's last entry, then every change), so a signal sent
before anyone waits is the first thing the watch delivers. The first value
seen is consumed: deleted with a compare-and-set on its revision, so that a
loop waiting for the same name again waits for a new signal, and that of two
waiters only one gets it (the other's delete fails and it watches on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from .wire.headers import WRONG_LAST_SEQUENCE_CODES

TIMED_OUT = object()  # what receive_signal returns when no signal came in time


async def receive_signal(kv: KeyValue, key: str, timeout: float, on_waiting: Callable[[], Awaitable[None]]) -> Any:
    """The value at ``key``, consumed, once there is one; ``on_waiting()`` is awaited
    once if none is there yet. ``TIMED_OUT`` if none came within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    watcher = await kv.watch(key)
    try:
        reported = False
        while (remaining := deadline - loop.time()) > 0:
            try:
                entry = await watcher.updates(timeout=remaining)
            except NatsTimeoutError:
                break
            # None ends the watch's initial state; a delete marker is a consumed signal.
            if entry is None or entry.operation is not None:
                if not reported:
                    reported = True
                    await on_waiting()
                continue
            if await _consume(kv, key, entry.revision):
                return _decode(entry.value or b"")
        return TIMED_OUT
    finally:
        with contextlib.suppress(Exception):  # the connection may be closing: the watch goes with it
            await watcher.stop()


async def _consume(kv: KeyValue, key: str, revision: int | None) -> bool:
    """Delete the signal if it is still this revision; False if someone got there first."""
    try:
        await kv.delete(key, last=revision)
    except APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE_CODES:
            return False
        raise
    return True


def _decode(value: bytes) -> Any:
    # The control plane writes JSON; a raw value put by another tool is returned as text.
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return value.decode("utf-8", "replace")
