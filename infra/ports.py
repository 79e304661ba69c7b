"""NATS implementations of the actor ports, callable from actor threads."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats.domain.actions import EnqueueTask
from dagnats.domain.events import EVENT_DECODER, STEP_COMPLETED, STEP_FAILED, TASK_DECODER, Event
from dagnats.domain.state import WorkflowRun

from .bridge import LoopBridge, SystemClock
from .headers import MSG_ID, TRACEPARENT
from .history import HistoryStore
from .registry import worker_alive
from .tracing import engine_span
from .resources import INBOX_STREAM, TASK_STREAM, inbox_subject, task_subject

_TASK_ENCODER = msgspec.json.Encoder()
_TASK_DECODER = TASK_DECODER
RESULT_FACTS = frozenset({STEP_COMPLETED, STEP_FAILED})


class NatsHistoryPort:
    def __init__(self, store: HistoryStore, bridge: LoopBridge) -> None:
        self.store, self.bridge = store, bridge

    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        return self.bridge.call(self.store.load(run_id))

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        return self.bridge.call(self.store.read_after(run_id, after_seq))

    def append(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str) -> int:
        return self.bridge.call(self.store.append(run_id, events, expected_seq, msg_id))

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool) -> None:
        coro = self.store.save_snapshot(run, last_seq)
        if wait:
            self.bridge.call(coro)
        else:
            self.bridge.spawn(coro)


async def publish_tasks(js: JetStreamContext, tasks: list[EnqueueTask]) -> None:
    """Publish tasks concurrently; each is deduplicated by run, step and attempt."""

    async def publish(task: EnqueueTask) -> None:
        p = task.payload
        suffix = f".{task.variant}" if task.variant else ""
        headers = {MSG_ID: f"{p.run_id}.{p.step_id}.{p.attempt}{suffix}"}
        if p.traceparent:
            headers[TRACEPARENT] = p.traceparent
        subject = task_subject(task.task, p.run_id, task.group or None)
        await js.publish(subject, _TASK_ENCODER.encode(p), headers=headers)

    await asyncio.gather(*(publish(t) for t in tasks))


class NatsTaskPort:
    """Re-issues the tasks of a rebuilt run (the hot path publishes with the record)."""

    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge

    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        self.bridge.call(self._reissue(tasks))

    async def _reissue(self, tasks: list[EnqueueTask]) -> None:
        # A worker stores its result before it acks the task, so a dispatched
        # attempt is always somewhere: its task in TASK_QUEUES (waiting, or being
        # worked on), or its result in the run's inbox. Publish only the ones that
        # are in neither: re-publishing beyond the dedup window would run them twice.
        lost = [t for t in tasks if not await self._accounted_for(t)]
        if lost:
            # Its own message id: the first publish's id may still be in the dedup window.
            await publish_tasks(self.js, [msgspec.structs.replace(t, variant="reissued") for t in lost])

    async def _accounted_for(self, task: EnqueueTask) -> bool:
        p = task.payload
        subject = task_subject(task.task, p.run_id, task.group or None)
        for body in await _bodies(self.js, TASK_STREAM, subject):
            queued = _TASK_DECODER.decode(body)
            if (queued.step_id, queued.attempt) == (p.step_id, p.attempt):
                return True
        for body in await _bodies(self.js, INBOX_STREAM, inbox_subject(p.run_id)):
            fact = EVENT_DECODER.decode(body)
            if (fact.step_id, fact.attempt) == (p.step_id, p.attempt) and fact.type in RESULT_FACTS:
                return True
        return False


def _traced(task: EnqueueTask, trace_parent: str) -> EnqueueTask:
    return msgspec.structs.replace(task, payload=msgspec.structs.replace(task.payload, traceparent=trace_parent))


async def _bodies(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """The bodies of the messages still stored on ``subject``."""
    bodies, seq = [], 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return bodies
        bodies.append(msg.data or b"")
        seq = msg.seq + 1


class NatsWorkerLiveness:
    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge

    def alive(self, worker_id: str) -> bool:
        return self.bridge.call(worker_alive(self.js, worker_id))


class NatsPorts:
    def __init__(self, js: JetStreamContext, bridge: LoopBridge) -> None:
        self.js, self.bridge = js, bridge
        self.store = HistoryStore(js)
        self.history = NatsHistoryPort(self.store, bridge)
        self.tasks = NatsTaskPort(js, bridge)
        self.clock = SystemClock(bridge)
        self.workers = NatsWorkerLiveness(js, bridge)

    def record(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str,
               tasks: list[EnqueueTask]) -> int:
        return self.bridge.call(self._record(run_id, events, expected_seq, msg_id, tasks))

    async def _record(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str,
                      tasks: list[EnqueueTask]) -> int:
        with engine_span(run_id, events) as trace_parent:
            if trace_parent:  # workers' spans become children of this decision's span
                tasks = [_traced(t, trace_parent) for t in tasks]
            return await self._append_and_dispatch(run_id, events, expected_seq, msg_id, tasks)

    async def _append_and_dispatch(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str,
                                   tasks: list[EnqueueTask]) -> int:
        append = self.store.append(run_id, events, expected_seq, msg_id)
        if not tasks:
            return await append
        seq, published = await asyncio.gather(append, publish_tasks(self.js, tasks), return_exceptions=True)
        for outcome in (seq, published):
            if isinstance(outcome, BaseException):
                raise outcome
        return seq
