"""Requests and JetStream publishes with less work per message than nats-py's own.

``Client.request`` draws random bytes for each reply token (a system call),
builds a NUID and waits through ``asyncio.wait_for`` (a second future and a
timer); ``JetStreamContext.publish`` is such a request, and decodes the PubAck
with ``json`` and a dataclass. A run stores several messages per step and
makes several requests (hand-offs, control-plane calls), so ``LeanRequests``
does the same with a counter for the token, one reply subscription (whose
messages are handled as the connection reads them: ``handle_at_once``), one
sweep that expires every request past its deadline (not a timer per request)
and ``publish_now``; ``LeanJetStream`` publishes through it and decodes with
msgspec: the same signatures, answers and errors (``NoRespondersError``,
``nats.errors.TimeoutError``; for a publish ``APIError`` and its kinds with the
server's ``err_code``, and ``NoStreamResponseError``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError

log = logging.getLogger("dagnats.lean")
NO_RESPONDERS = "503"
DEFAULT_TIMEOUT = 5.0
# A request times out at most this much after its deadline (expiries are swept together).
SWEEP_EVERY = 0.05


class _AtOnce:
    """Stands in for a subscription's pending queue (``Subscription._pending_queue``, which
    nats-py's reader puts each message in for the subscription's own task to take and
    pass to its callback): ``put_nowait`` hands the message to ``handle`` at once, in the
    reader. No queue, and no task woken per message. ``handle`` must not block."""

    def __init__(self, sub: Subscription, handle: Callable[[Msg], None]) -> None:
        self.sub, self.handle = sub, handle

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # counted as pending just before
        try:
            self.handle(msg)
        except Exception:  # noqa: BLE001 - the connection's reader must go on
            log.exception("handling a message on %s failed", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


def handle_at_once(sub: Subscription, handle: Callable[[Msg], None]) -> None:
    """Have ``sub`` (subscribed without a callback) hand each message to ``handle`` as it
    is read, instead of queueing it."""
    sub._pending_queue = _AtOnce(sub, handle)  # type: ignore[assignment]


_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def publish_now(
    nc: NATS, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
) -> bool:
    """Queue a message on ``nc``'s connection at once, as ``nc.publish`` does (the same
    protocol line, the same pending buffer, the same flusher), without its chain of
    coroutines, a future and a queue wait per message. False, with nothing queued, when
    ``nc.publish`` must do it: not connected (it buffers or refuses), draining, the
    payload over the server's limit, or the pending buffer full (it flushes first).

    For the engine's own subjects and header names (identifiers checked where they
    are made); header values have their line breaks replaced, as nats-py does.
    """
    queue = nc._flush_queue
    if nc._status != NATS.CONNECTED or queue is None or len(payload) > nc._max_payload:
        return False
    if headers:
        lines = "".join(f"{k.strip()}: {v.strip().translate(_NEWLINES)}\r\n" for k, v in headers.items())
        block = b"NATS/1.0\r\n" + lines.encode() + b"\r\n"
        cmd = b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
            subject.encode(),
            reply.encode(),
            len(block),
            len(block) + len(payload),
            block,
            payload,
        )
    else:
        cmd = b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    if nc._max_pending_size > 0 and nc._pending_data_size + len(cmd) > nc._max_pending_size:
        return False
    nc._pending.append(cmd)
    nc._pending_data_size += len(cmd)
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    if queue.empty():  # wake the connection's flusher, as nats-py does
        queue.put_nowait(asyncio.get_running_loop().create_future())
    return True


async def ack(msg: Msg) -> None:
    """``msg.ack()`` (an empty message to its reply subject), queued at once when the
    connection can take it (``publish_now``); the same errors for a message that is not
    JetStream's or was acknowledged already."""
    if msg.reply and not msg._ackd and publish_now(msg._client, msg.reply):
        msg._ackd = True
        return
    await msg.ack()


class LeanRequests:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._reply_to = ""
        self._subscribing: asyncio.Lock | None = None
        # Per timeout, (deadline, token) in the order the requests went out, so in the
        # order they fall due; one sweep expires what is overdue (no timer per request).
        self._deadlines: dict[float, deque[tuple[float, str]]] = {}
        self._sweep_at: asyncio.TimerHandle | None = None

    async def _prefix(self) -> str:
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if not self._reply_to:
                prefix = self.nc.new_inbox()
                # Sent before any request that names it: the server sees the SUB first.
                handle_at_once(await self.nc.subscribe(f"{prefix}.*"), self._reply)
                self._reply_to = f"{prefix}."
        return self._reply_to

    def _reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._reply_to) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(NatsTimeoutError())

    def _due(self, loop: asyncio.AbstractEventLoop, timeout: float, token: str) -> None:
        due = loop.time() + timeout
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = deque()
        queue.append((due, token))
        armed = self._sweep_at
        if armed is None or due < armed.when():  # a shorter timeout than those waiting
            if armed is not None:
                armed.cancel()
            self._sweep_at = loop.call_at(due, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expire the requests past their deadline (a request answered meanwhile is gone
        from ``_pending``); come back when the next one falls due, at most every SWEEP_EVERY."""
        now, soonest = loop.time(), None
        for timeout, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                self._expire(queue.popleft()[1])
            if queue:
                soonest = queue[0][0] if soonest is None else min(soonest, queue[0][0])
            else:
                del self._deadlines[timeout]
        self._sweep_at = None if soonest is None else loop.call_at(max(soonest, now + SWEEP_EVERY), self._sweep, loop)

    def waiting(self) -> int:
        return len(self._pending)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = DEFAULT_TIMEOUT,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        prefix = self._reply_to or await self._prefix()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = future
        self._due(loop, timeout, token)
        try:
            if not publish_now(self.nc, subject, payload, prefix + token, headers):
                await self.nc.publish(subject, payload, reply=prefix + token, headers=headers)
            msg = await future
        finally:
            self._pending.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS:
            raise NoRespondersError
        return msg


class _Answer(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_DECODER = msgspec.json.Decoder(_Answer)


class LeanJetStream(JetStreamContext):
    def __init__(self, nc: NATS, requests: LeanRequests | None = None, **opts: Any) -> None:
        super().__init__(nc, **opts)
        self.lean = requests or LeanRequests(nc)

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
        try:
            msg = await self.lean.request(subject, payload, self._timeout if timeout is None else timeout, headers)
        except NoRespondersError:
            raise NoStreamResponseError from None
        answer = _DECODER.decode(msg.data)
        if answer.error is not None:
            raise APIError.from_error(answer.error)
        return api.PubAck(stream=answer.stream, seq=answer.seq, domain=answer.domain, duplicate=answer.duplicate)


def requester(js: JetStreamContext) -> Any:
    """What to make core requests with beside ``js``: its lean requests, or its connection."""
    return js.lean if isinstance(js, LeanJetStream) else js._nc
