"""NATS implementations of the actor ports, callable from actor threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from dagnats.actors.ports import Clock, FlowPort
from dagnats.domain.actions import DropTask, EnqueueTask, StartTimer
from dagnats.domain.events import EVENT_DECODER, TASK_DECODER, Event, TimerFired
from dagnats.domain.partition import partition_of
from dagnats.domain.state import WorkflowRun

from ..wire.facts import publish_fact
from ..wire.handoff import RESULT_FACTS
from ..wire.headers import BAGGAGE, HANDOFF, MSG_ID, TRACEPARENT, TRACESTATE
from ..wire.names import INBOX_STREAM, TASK_STREAM
from ..wire.reading import stored_messages
from ..wire.subjects import handoff_subject, stored_inbox_filter, task_subject
from ..wire.timers import arm_timers, cancel_timers
from ..wire.workers import worker_alive
from .bridge import LoopBridge, SystemClock
from .history import HistoryStore
from .limits import NatsLimitStore
from .outbox import NatsOutbox
from .reader import RunReader

log = logging.getLogger("dagnats.ports")
_TASK_ENCODER = msgspec.json.Encoder()
MSG_DELETE_FAILED = 10057  # JetStream's err_code for a delete_msg that found no message
# Room a history record leaves for its headers under the server's max payload.
HEADER_ROOM = 4096


class NatsHistoryPort:
    def __init__(self, store: HistoryStore, bridge: LoopBridge) -> None:
        self.store, self.bridge = store, bridge

    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        return self.bridge.call(self.store.load(run_id))

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        return self.bridge.call(self.store.read_after(run_id, after_seq))

    def append(self, run_id: str, record: bytes, expected_seq: int, msg_id: str) -> int:
        return self.bridge.call(self.store.append(run_id, record, expected_seq, msg_id))

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool, listed: bool = True) -> None:
        coro = self.store.save_snapshot(run, last_seq, listed)
        if wait:
            self.bridge.call(coro)
        else:
            self.bridge.spawn(coro)


async def publish_tasks(js: JetStreamContext, tasks: list[EnqueueTask], partitions: int | None = None) -> None:
    """Publish tasks concurrently; each is deduplicated by run, step and attempt.

    With ``partitions``, each task names the subject its worker may hand the result to
    (``Dagnats-Handoff``: the run's partition's owner, see ``engine.handoff``).

    A publish the stream takes as a duplicate was published before, by a record
    that did not land (the engine died between its tasks and its append) or by
    this one's earlier try. The task went out then, but its worker's report may
    have been dropped as stale before this record existed: a task neither queued
    nor answered is published again under its own id, or the run would wait forever.
    """

    async def publish(task: EnqueueTask) -> None:
        ack = await _publish_task(js, task, partitions)
        if ack.duplicate and not task.variant and not await accounted_for(js, task):
            await _publish_task(js, msgspec.structs.replace(task, variant="reissued"), partitions)

    if len(tasks) == 1:  # the usual record: no gathering
        await publish(tasks[0])
    else:
        await asyncio.gather(*(publish(t) for t in tasks))


async def _publish_task(js: JetStreamContext, task: EnqueueTask, partitions: int | None = None) -> PubAck:
    p = task.payload
    suffix = f".{task.variant}" if task.variant else ""
    index = f".i{p.instance}" if p.instance is not None else ""
    headers = {MSG_ID: f"{p.run_id}.{p.step_id}{index}.{p.attempt}{suffix}"}
    if partitions:
        headers[HANDOFF] = handoff_subject(partition_of(p.run_id, partitions))
    if p.traceparent:
        headers[TRACEPARENT] = p.traceparent
    if p.tracestate:
        headers[TRACESTATE] = p.tracestate
    if p.baggage:
        headers[BAGGAGE] = p.baggage
    subject = task_subject(task.task, p.run_id, task.group or None, task.capabilities)
    return await js.publish(subject, _TASK_ENCODER.encode(p), headers=headers)


async def accounted_for(js: JetStreamContext, task: EnqueueTask) -> bool:
    """Whether a dispatched attempt is somewhere: its task in TASK_QUEUES (waiting, or
    being worked on), or its result in the run's inbox. A worker stores its result
    before it acks the task, so an attempt in neither was lost."""
    p = task.payload
    subject = task_subject(task.task, p.run_id, task.group or None, task.capabilities)
    async for msg in stored_messages(js, TASK_STREAM, subject):
        queued = TASK_DECODER.decode(msg.data or b"")
        if (queued.step_id, queued.attempt, queued.instance) == (p.step_id, p.attempt, p.instance):
            return True
    async for msg in stored_messages(js, INBOX_STREAM, stored_inbox_filter(p.run_id)):
        fact = EVENT_DECODER.decode(msg.data or b"")
        if (fact.step_id, fact.attempt, fact.instance) == (p.step_id, p.attempt, p.instance) and (
            fact.type in RESULT_FACTS
        ):
            return True
    return False


class NatsTaskPort:
    """Re-issues the tasks of a rebuilt run and drops superseded ones (the hot path
    publishes tasks with their record)."""

    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge

    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        self.bridge.call(self._reissue(tasks))

    def drop(self, drops: list[DropTask]) -> None:
        self.bridge.call(self._drop(drops))

    async def _reissue(self, tasks: list[EnqueueTask]) -> None:
        # Publish only the attempts that are nowhere: re-publishing beyond the dedup
        # window would run them twice.
        lost = [t for t in tasks if not await accounted_for(self.js, t)]
        if lost:
            # Its own message id: the first publish's id may still be in the dedup window.
            await publish_tasks(self.js, [msgspec.structs.replace(t, variant="reissued") for t in lost])

    async def _drop(self, drops: list[DropTask]) -> None:
        for drop in drops:
            subject = task_subject(drop.task, drop.run_id, drop.group or None, drop.capabilities)
            async for msg in stored_messages(self.js, TASK_STREAM, subject):
                queued = TASK_DECODER.decode(msg.data or b"")
                same_instance = drop.instance is None or queued.instance == drop.instance
                if (
                    queued.step_id == drop.step_id
                    and queued.attempt <= drop.up_to_attempt
                    and same_instance
                    and msg.seq
                ):
                    try:
                        await self.js.delete_msg(TASK_STREAM, msg.seq)
                    except NotFoundError:
                        pass  # a worker acked it meanwhile
                    except APIError as err:
                        # The server says so with "no message found" under 10057 (msg
                        # delete failed), not a 404: a worker acked it meanwhile too.
                        if err.err_code != MSG_DELETE_FAILED:
                            raise


class NatsTimerPort:
    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge

    def arm(self, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
        self.bridge.call(arm_timers(self.js, run_id, timers, trace_parent))

    def cancel(self, run_id: str, timer_ids: list[str]) -> None:
        self.bridge.spawn(cancel_timers(self.js, run_id, timer_ids))

    def fire(self, event: TimerFired) -> None:
        self.bridge.spawn(publish_fact(self.js, event))


class NatsWorkerLiveness:
    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge

    def alive(self, worker_id: str) -> bool:
        return self.bridge.call(worker_alive(self.js, worker_id))


class Unstarted:
    """Flow control before the engine started its actors."""

    def acquire(self, acquire: Any) -> Any:
        raise RuntimeError("flow control is not started")

    def release(self, releases: list[Any]) -> None:
        raise RuntimeError("flow control is not started")


class NatsPorts:
    def __init__(
        self,
        js: JetStreamContext,
        bridge: LoopBridge,
        reader: RunReader,
        max_payload: int,
        clock: Clock | None = None,
        partitions: int | None = None,
    ) -> None:
        self.js, self.bridge, self.partitions = js, bridge, partitions
        self.store = reader.store
        self.history = NatsHistoryPort(self.store, bridge)
        self.tasks = NatsTaskPort(js, bridge)
        self.timers = NatsTimerPort(js, bridge)
        self.outbox = NatsOutbox(reader.nc, bridge)
        self.clock: Clock = clock or SystemClock(bridge)
        self.workers = NatsWorkerLiveness(js, bridge)
        self.state = reader
        self.limits = NatsLimitStore(js, bridge, reader)
        self.flow: FlowPort = Unstarted()
        # Run actors live on the loop's thread, each on a greenlet (``actors.hosted``).
        self.host = bridge.post
        self.max_record_bytes = max_payload - HEADER_ROOM

    def record(
        self,
        run_id: str,
        events: list[Event],
        body: bytes,
        expected_seq: int,
        msg_id: str,
        tasks: list[EnqueueTask],
        timers: list[StartTimer],
        trace_parent: str,
    ) -> int:
        return self.bridge.call(self._record(run_id, events, body, expected_seq, msg_id, tasks, timers, trace_parent))

    async def _record(
        self,
        run_id: str,
        events: list[Event],
        record: bytes,
        expected_seq: int,
        msg_id: str,
        tasks: list[EnqueueTask],
        timers: list[StartTimer],
        trace_parent: str,
    ) -> int:
        # No live span: the engine's spans are projected from the history (trace_projector).
        append = self.store.append(run_id, record, expected_seq, msg_id)
        if not tasks and not timers:
            return await append
        effects: list[Coroutine[Any, Any, None]] = []
        if tasks:
            effects.append(publish_tasks(self.js, tasks, self.partitions))
        if timers:
            effects.append(arm_timers(self.js, run_id, timers, trace_parent))
        if expected_seq == 0:
            # A run's first record: what it dispatches goes out once its start is stored.
            # Beside an append that fails, a task would run for a run that may never
            # exist (and, under an idempotency key, beside the run a retried start makes).
            try:
                seq = await append
            except BaseException:
                for effect in effects:
                    effect.close()  # never to run: closed, not left for the collector to warn about
                raise
            await _alongside(effects[0], effects[1:])
            return seq
        return int(await _alongside(append, effects))


async def _alongside(first: Coroutine[Any, Any, Any], others: list[Coroutine[Any, Any, None]]) -> Any:
    """Run ``first`` and ``others`` concurrently and wait for all of them; ``first``'s result.
    Raises the first failure in that order (``first``'s before the others'). One effect, the
    usual record's, is awaited here beside ``first``'s task: no gathering."""
    if len(others) != 1:
        seq, *done = await asyncio.gather(first, *others, return_exceptions=True)
        for outcome in (seq, *done):
            if isinstance(outcome, BaseException):
                raise outcome
        return seq
    started = asyncio.ensure_future(first)
    failed: BaseException | None = None
    try:
        await others[0]
    except Exception as err:  # noqa: BLE001 - raised below, after ``first``'s own outcome
        failed = err
    result = await started
    if failed is not None:
        raise failed
    return result


class OffLoop:
    """Flow control for run actors hosted on the loop: an acquire waits for the flow actors'
    answers on a thread of its own (they block), the actor's greenlet parked meanwhile."""

    def __init__(self, flow: FlowPort, bridge: LoopBridge) -> None:
        self.flow, self.bridge = flow, bridge

    def acquire(self, acquire: Any) -> Any:
        return self.bridge.call(asyncio.to_thread(self.flow.acquire, acquire))

    def release(self, releases: list[Any]) -> None:
        self.flow.release(releases)
