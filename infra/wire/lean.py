"""JetStream publishes with less work per message than nats-py's own.

``JetStreamContext.publish`` is a request: each one draws random bytes for its
reply token (a system call), builds a NUID, waits through ``asyncio.wait_for``
(a second future and a timer) and decodes the PubAck with ``json`` and a
dataclass. The engine stores several messages per step (history records,
tasks, snapshots through the KV API, which publishes through its context), so
``LeanJetStream`` does the same work with a counter for the token, one reply
subscription, one timer per publish and msgspec; the same signature, the same
answers and the same errors (``APIError`` and its kinds with the server's
``err_code``, ``NoStreamResponseError``, ``nats.errors.TimeoutError``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError

NO_RESPONDERS = "503"


class _Answer(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_DECODER = msgspec.json.Decoder(_Answer)


class LeanJetStream(JetStreamContext):
    def __init__(self, nc: NATS, **opts: Any) -> None:
        super().__init__(nc, **opts)
        self._lean_pending: dict[str, asyncio.Future[Msg]] = {}
        self._lean_tokens = itertools.count(1)
        self._lean_reply_to = ""
        self._lean_lock: asyncio.Lock | None = None

    async def _lean_prefix(self) -> str:
        if self._lean_lock is None:
            self._lean_lock = asyncio.Lock()
        async with self._lean_lock:
            if not self._lean_reply_to:
                prefix = self._nc.new_inbox()
                # Sent before any publish that names it: the server sees the SUB first.
                await self._nc.subscribe(f"{prefix}.*", cb=self._lean_reply)
                self._lean_reply_to = f"{prefix}."
        return self._lean_reply_to

    async def _lean_reply(self, msg: Msg) -> None:
        future = self._lean_pending.pop(msg.subject[len(self._lean_reply_to) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _lean_expire(self, token: str) -> None:
        future = self._lean_pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(NatsTimeoutError())

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> api.PubAck:
        if msg_ttl is not None:
            return await super().publish(subject, payload, timeout, stream, headers, msg_ttl)
        if stream is not None:
            headers = {**(headers or {}), api.Header.EXPECTED_STREAM: stream}
        prefix = self._lean_reply_to or await self._lean_prefix()
        token = str(next(self._lean_tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._lean_pending[token] = future
        timer = loop.call_later(self._timeout if timeout is None else timeout, self._lean_expire, token)
        try:
            await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._lean_pending.pop(token, None)
        if msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS:
            raise NoStreamResponseError
        answer = _DECODER.decode(msg.data)
        if answer.error is not None:
            raise APIError.from_error(answer.error)
        return api.PubAck(stream=answer.stream, seq=answer.seq, domain=answer.domain, duplicate=answer.duplicate)
