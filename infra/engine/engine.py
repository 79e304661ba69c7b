"""The engine: consumes run inboxes and hands facts to the run directory.

One durable pull consumer on ``inbox.>`` (work-queue) feeds the directory;
each fetched batch is decoded once (a fact that does not decode is
terminated, with a warning naming its subject) and grouped by run so a run's
facts become one record. A message is acknowledged only after its run actor
has recorded the fact and carried out what followed from it; on failure it
is redelivered. Every effect of a recorded decision (tasks, timer schedules)
is stored before the fact that led to it is acknowledged, and a fact whose
effects were not stored comes back and rebuilds its run, so nothing needs
re-arming at start; the engine still brings up the runs its snapshots list as
unfinished, to re-issue a task lost behind its back (a purged queue). Run
actors publish their state into the ``RunReader``, which readers ask.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.actors.directory import RunDirectory
from dagnats.actors.flow import ConcurrencyActor, FlowControl, RateLimitActor
from dagnats.actors.messages import Deliver, LiveCount
from dagnats.actors.ports import Clock
from dagnats.actors.timer import TimerActor
from dagnats.domain.events import Event, decode_event, format_timestamp, parse_timestamp

from ..tracing import valid_trace_parent
from ..wire.names import INBOX_STREAM
from ..wire.reading import more_pending
from .bridge import LoopBridge
from .dead_letters import DeadLetterMover
from .history import HistoryStore
from .ports import NatsPorts
from .reader import RunReader
from .streams import ensure_resources

log = logging.getLogger("dagnats.engine")

INBOX_CONSUMER = "engine"
FETCH_BATCH = 256
INBOX_ACK_WAIT = 30.0


class Engine:
    def __init__(
        self,
        nc: NATS,
        *,
        max_live: int = 512,
        replicas: int = 1,
        quarantine_retry: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.nc, self.max_live, self.replicas, self.clock = nc, max_live, replicas, clock
        self.quarantine_retry = quarantine_retry
        self.js = nc.jetstream()
        self._tasks: list[asyncio.Task] = []
        self._running = False

    async def start(self) -> None:
        await ensure_resources(self.js, self.replicas)
        loop = asyncio.get_running_loop()
        self.bridge = LoopBridge(loop)
        self.reader = RunReader(self.nc, HistoryStore(self.js, self.nc.max_payload), loop)
        self.ports = NatsPorts(self.js, self.bridge, self.reader, self.nc.max_payload, self.clock)
        self.timers = TimerActor.start(self.ports.clock, self.ports.timers)
        self.slots = ConcurrencyActor.start(self.ports.limits, self.ports.clock)
        self.rates = RateLimitActor.start(self.ports.limits, self.ports.clock)
        self.ports.flow = FlowControl(self.slots, self.rates, self.ports.clock)
        self.directory = RunDirectory.start(self.ports, self.timers, self.max_live, self.quarantine_retry)
        self._sub = await self.js.pull_subscribe(
            "inbox.>",
            durable=INBOX_CONSUMER,
            stream=INBOX_STREAM,
            config=api.ConsumerConfig(ack_wait=INBOX_ACK_WAIT, max_ack_pending=50_000, max_deliver=-1),
        )
        self.dead_letters = DeadLetterMover(self.nc)
        await self.dead_letters.start()
        self._running = True
        self._tasks.append(asyncio.create_task(self._consume(), name="engine-inbox"))
        await self._recover_unfinished()

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a nats-py call may not end promptly when cancelled
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks.clear()
        await _quietly(self._sub.unsubscribe())
        await self.dead_letters.stop()
        # Actors block on the loop; stop them from a thread so the loop keeps serving them.
        await asyncio.to_thread(self._stop_actors)

    def _stop_actors(self) -> None:
        for ref in (self.directory, self.timers, self.slots, self.rates):
            if ref.is_alive():
                ref.stop(block=True, timeout=10)

    async def live_count(self) -> int:
        """How many run actors are alive (asked of the directory, off the loop)."""
        count = await asyncio.to_thread(lambda: self.directory.ask(LiveCount(), timeout=5))
        return int(count)  # type: ignore[arg-type]

    async def pending_timers(self) -> int:
        """How many timers the engine holds armed."""
        return await asyncio.to_thread(lambda: self.timers.proxy().pending().get(timeout=5))

    # ---- inbox -----------------------------------------------------------------

    async def _consume(self) -> None:
        batch = 1
        while self._running:
            try:
                # A batch pull on an empty queue lingers until the batch fills or the
                # timeout ends, so ask for one message unless the server said more wait.
                msgs = await self._sub.fetch(batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # reconnects, leader changes: keep consuming
                log.warning("inbox fetch failed: %s", err)
                await asyncio.sleep(0.5)
                continue
            batch = FETCH_BATCH if more_pending(msgs) else 1
            self._dispatch(msgs)

    def _dispatch(self, msgs: list[Msg]) -> None:
        by_run: dict[str, list[tuple[Event, Msg]]] = defaultdict(list)
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except msgspec.DecodeError as err:
                log.warning("dropping an inbox message on %s that is not a fact: %s", msg.subject, err)
                asyncio.create_task(msg.term())
                continue
            run_id = msg.subject.split(".", 1)[1]
            if event.run_id != run_id:
                log.warning("dropping inbox message for %s claiming run %s", run_id, event.run_id)
                asyncio.create_task(msg.term())
                continue
            by_run[run_id].append((_sanitized(event), msg))
        for run_id, items in by_run.items():
            events = tuple(e for e, _ in items)
            batch = [m for _, m in items]
            self.directory.tell(Deliver(run_id, events, self._acker(batch)))

    def _acker(self, msgs: list[Msg]):
        loop = self.bridge.loop

        def done(ok: bool, retry_in: float = 0.5) -> None:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_settle(msgs, ok, retry_in)))

        return done

    # ---- recovery --------------------------------------------------------------------

    async def _recover_unfinished(self) -> None:
        """Bring up each unfinished run once (an empty delivery): it re-issues what it waits on."""
        unfinished = [s.run.run_id for s in await self.reader.store.snapshots() if not s.run.is_terminal]
        for run_id in unfinished:
            self.directory.tell(Deliver(run_id, ()))
        if unfinished:
            log.info("recovering %d unfinished runs", len(unfinished))


def _sanitized(event: Event) -> Event:
    """Facts come from outside: a bad timestamp or traceparent must not poison the run."""
    changes = {}
    try:
        parse_timestamp(event.timestamp)
    except (TypeError, ValueError):
        changes["timestamp"] = format_timestamp(datetime.now(UTC))
    if event.started_at:
        try:
            parse_timestamp(event.started_at)
        except (TypeError, ValueError):
            changes["started_at"] = ""
    if event.trace_parent and not valid_trace_parent(event.trace_parent):
        changes["trace_parent"] = ""
    return msgspec.structs.replace(event, **changes) if changes else event


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as err:  # shutting down: nothing left to save
        log.debug("ignored during shutdown: %s", err)


async def _settle(msgs: list[Msg], ok: bool, retry_in: float = 0.5) -> None:
    for msg in msgs:
        try:
            if ok:
                await msg.ack()
            else:
                await msg.nak(delay=retry_in)
        except Exception as err:  # the message will be redelivered after ack_wait
            log.debug("settling inbox message failed: %s", err)
