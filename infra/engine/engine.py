"""The engine: consumes the inboxes of the partitions it owns and hands facts to
the run directory.

Runs are divided into partitions (``domain.partition``); the engine consumes
those its leases give it (``leases``), one durable pull consumer each
(``inbox``). Each fetched batch is decoded once (a fact that does not decode
is terminated, with a warning naming its subject) and grouped by run so a
run's facts become one record. A message is acknowledged only after its run actor
has recorded the fact and carried out what followed from it; on failure it
is redelivered. Every effect of a recorded decision (tasks, timer schedules)
is stored before the fact that led to it is acknowledged, and a fact whose
effects were not stored comes back and rebuilds its run, so nothing needs
re-arming at start; an engine that gains a partition still brings up the
partition's unfinished runs (their snapshots are kept by partition), to re-issue a task lost behind its
back (a purged queue). Run actors publish their state into the ``RunReader``,
which readers ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict
from datetime import UTC, datetime

import msgspec
import pykka
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dagnats.actors.flow import ConcurrencyActor, FlowControl, RateLimitActor
from dagnats.actors.messages import Deliver, LetGo, LiveCount, bundled
from dagnats.actors.ports import Clock
from dagnats.actors.runtime import start_directory
from dagnats.actors.timer import TimerActor
from dagnats.domain.events import Event, TimerFired, decode_event, format_timestamp, parse_timestamp
from dagnats.domain.partition import partition_of
from dagnats.domain.run_context import run_context

from .. import metrics
from ..tracing import valid_trace_parent
from ..wire.lean import LeanJetStream
from .bridge import LoopBridge
from .dead_letters import DeadLetterMover
from .engine_gauges import EngineGauges
from .handoff import Handoff
from .history import HistoryStore
from .inbox import LEGACY, PartitionPuller, retire_old_consumer
from .leases import PartitionLeases
from .ports import NatsPorts, OffLoop
from .reader import RunReader
from .streams import ensure_resources, patiently

log = logging.getLogger("dagnats.engine")

HANDOVER_SETTLE = 10.0  # seconds a partition handed over waits for what it fetched
# Unfinished runs of a claimed partition brought up at a time (each an actor, a thread,
# until it passivates), and how long one may take before the next goes anyway.
RECOVER_AT_ONCE = 64
RECOVER_WAIT = 30.0


class Engine:
    def __init__(
        self,
        nc: NATS,
        *,
        max_live: int = 512,
        replicas: int = 1,
        partitions: int | None = None,
        quarantine_retry: float = 30.0,
        clock: Clock | None = None,
        engine_id: str | None = None,
    ) -> None:
        self.nc, self.max_live, self.replicas, self.clock = nc, max_live, replicas, clock
        self.partitions = partitions
        self.quarantine_retry = quarantine_retry
        self.engine_id = engine_id or f"engine-{secrets.token_hex(4)}"
        self.js = LeanJetStream(nc)  # the hot path's stored publishes, with less work each
        self.pullers: dict[int, PartitionPuller] = {}
        self._recoveries: set[asyncio.Task] = set()
        self._running = False
        self.gauges: EngineGauges | None = None

    async def start(self) -> None:
        self.partition_count = await ensure_resources(self.js, self.replicas, self.partitions)
        loop = asyncio.get_running_loop()
        self.bridge = LoopBridge(loop)
        self.reader = RunReader(self.nc, HistoryStore(self.js, self.nc.max_payload, self.partition_count), loop)
        self.ports = NatsPorts(
            self.js, self.bridge, self.reader, self.nc.max_payload, self.clock, partitions=self.partition_count
        )
        self.timers = TimerActor.start(self.ports.clock, self.ports.timers)
        self.slots = ConcurrencyActor.start(self.ports.limits, self.ports.clock)
        self.rates = RateLimitActor.start(self.ports.limits, self.ports.clock)
        self.ports.flow = OffLoop(FlowControl(self.slots, self.rates, self.ports.clock), self.bridge)
        self.directory = start_directory(self.ports, self.timers, self.max_live, self.quarantine_retry)
        await patiently(retire_old_consumer, self.js)
        self.handoff = Handoff(self.nc, self.partition_count, self.directory.tell, self._holds, _sanitized)
        self.reader.owns = lambda run_id: self._holds(partition_of(run_id, self.partition_count))
        self.leases = PartitionLeases(self.js, self.engine_id, self.partition_count, self._gained, self._lost)
        self.dead_letters = DeadLetterMover(self.nc)
        await self.dead_letters.start()
        self._running = True
        await self.leases.start()
        self.gauges = EngineGauges(self)
        await self.gauges.start()
        log.info("engine %s owns partitions %s of %d", self.engine_id, sorted(self.leases.owned), self.partition_count)

    async def stop(self) -> None:
        self._running = False
        if self.gauges is not None:
            await self.gauges.stop()
        for task in list(self._recoveries):  # runs not brought up yet: their next facts do it
            task.cancel()
        # Hands every partition back (bounded: NATS may be gone).
        await _quietly(asyncio.wait_for(self.leases.stop(), HANDOVER_SETTLE + 5))
        for puller in list(self.pullers.values()):
            await _quietly(puller.stop())
        self.pullers.clear()
        await _quietly(self.handoff.close_all())
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

    # ---- partitions ------------------------------------------------------------------

    async def _gained(self, partition: int, previous: str | None) -> None:
        """Consume a partition just claimed (after a dead owner: its consumer afresh), and
        bring up its unfinished runs."""
        for consumed in (partition, LEGACY) if partition == 0 else (partition,):
            puller = PartitionPuller(self.js, consumed, self._dispatch, self._holds)
            await puller.start(fresh=previous is not None)
            self.pullers[consumed] = puller
        await self.handoff.open(partition)
        # Brought up in the background: the lease tick claims the next partition meanwhile.
        task = asyncio.create_task(self._recover(partition), name=f"recover-p{partition}")
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, partition: int) -> None:
        """Bring up the partition's unfinished runs: each re-issues what it waits on."""
        try:
            unfinished = await patiently(self.reader.store.open_runs, partition)
        except Exception as err:  # noqa: BLE001 - their next facts bring them up anyway
            log.warning("partition %d: cannot list its unfinished runs: %s", partition, err)
            return
        if unfinished:
            log.info("partition %d: recovering %d unfinished runs", partition, len(unfinished))
        # At most RECOVER_AT_ONCE at a time: all at once, 10,000 runs were 10,000 actor
        # threads starting together (a 4,000-thread peak), starving the loop they all wait on.
        gate = asyncio.Semaphore(RECOVER_AT_ONCE)
        for run_id in unfinished:
            await gate.acquire()
            if not self._holds(partition):  # handed over or stopped: its owner brings them up
                gate.release()
                return
            task = asyncio.create_task(self._bring_up(run_id, gate), name=f"bring-up-{run_id}")
            self._recoveries.add(task)
            task.add_done_callback(self._recoveries.discard)

    async def _bring_up(self, run_id: str, gate: asyncio.Semaphore) -> None:
        """Hand the run an empty delivery (it rebuilds and re-issues what it waits on) and
        wait until it has handled it, or RECOVER_WAIT."""
        loop = asyncio.get_running_loop()
        handled: asyncio.Future = loop.create_future()

        def settle() -> None:
            if not handled.done():
                handled.set_result(None)

        def done(*_: object, **__: object) -> None:  # on the actor's thread
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed: the engine stopped
                pass

        try:
            self.directory.tell(Deliver(run_id, (), done))
            await asyncio.wait_for(handled, RECOVER_WAIT)
        except TimeoutError:
            log.warning("run %s: not brought up within %gs; bringing up the next", run_id, RECOVER_WAIT)
        finally:
            gate.release()

    async def _lost(self, partition: int, graceful: bool) -> None:
        """Stop consuming a partition; handed over, let what was fetched be handled first."""
        await self.handoff.close(partition)
        self.reader.forget_partition(partition, self.partition_count)
        for consumed in (partition, LEGACY) if partition == 0 else (partition,):
            puller = self.pullers.pop(consumed, None)
            if puller is not None:
                await puller.stop(settle=HANDOVER_SETTLE if graceful else 0.0)
        if self._running:  # stopping, the directory stops every actor (listing the young runs)
            # After what was fetched has been handled: its runs' actors stop, writing nothing
            # more (what they published here is forgotten as they stop).
            with contextlib.suppress(pykka.ActorDeadError):
                self.directory.tell(LetGo(partition, self.partition_count, handed_over=graceful))

    def _holds(self, partition: int) -> bool:
        return self._running and self.leases.holds(0 if partition == LEGACY else partition)

    # ---- inbox -----------------------------------------------------------------------

    def _dispatch(self, msgs: list[Msg], partition: int) -> None:
        by_run: dict[str, list[tuple[Event, Msg]]] = defaultdict(list)
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except msgspec.DecodeError as err:
                log.warning("dropping an inbox message on %s that is not a fact: %s", msg.subject, err)
                asyncio.create_task(msg.term())
                continue
            run_id = msg.subject.rsplit(".", 1)[1]
            if event.run_id != run_id:
                with run_context(run_id, event.step_id, event.trace_parent):
                    log.warning("dropping inbox message for %s claiming run %s", run_id, event.run_id)
                asyncio.create_task(msg.term())
                continue
            if isinstance(event, TimerFired) and event.payload.due:
                _timer_lateness(event, self.ports.clock.now())
            by_run[run_id].append((_sanitized(event), msg))
        puller = self.pullers.get(partition)
        deliveries = []
        for run_id, items in by_run.items():
            events = tuple(e for e, _ in items)
            batch = [m for _, m in items]
            if puller is not None:
                puller.in_flight += 1
            deliveries.append(Deliver(run_id, events, self._acker(batch, puller)))
        if deliveries:  # one hand-off to the directory's thread for all of them
            self.directory.tell(bundled(deliveries))

    def _acker(self, msgs: list[Msg], puller: PartitionPuller | None):
        def done(ok: bool, retry_in: float = 0.5, repeated: bool = False) -> None:
            def settle() -> None:
                if puller is not None:
                    puller.in_flight -= 1
                asyncio.ensure_future(_settle(msgs, ok, retry_in))

            self.bridge.post(settle)

        return done


def _timer_lateness(event: TimerFired, now: datetime) -> None:
    """How late a timer's fact reaches the engine (a schedule fires a little after it is due)."""
    try:
        late = now - parse_timestamp(event.payload.due)
    except ValueError:
        return
    metrics.timer_lateness(late.total_seconds() * 1000, event.payload.kind)


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
