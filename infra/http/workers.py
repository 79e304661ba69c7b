"""HTTP workers (the seed's bridge): a service in any language serves tasks over HTTP.

    POST /v1/workers/connect          -> {worker_id}       (registers the worker)
    POST /v1/tasks/poll               -> [task, ...]       (long-poll, at most 60 s)
    POST /v1/tasks/{task_id}/resolve  TaskResolution       (complete | fail | continue |
                                                            checkpoint | heartbeat | pause |
                                                            send_signal | wait_signal)

The bridge pulls from the same shared consumers as Python workers
(``workers-<task>``), so HTTP and Python workers of one task take turns. A
polled task is held here (the message is kept in progress) under a fresh
``task_id`` until it is resolved; a worker that neither resolves nor
heartbeats for ``LEASE`` seconds loses it back to the queue. Results are
reported exactly as the Python SDK does (task_context.py): one fact to the
run's inbox with a deterministic ``Nats-Msg-Id`` (``wire.facts.fact_msg_id``), then the ack. Guarded by
``DAGNATS_BRIDGE_TOKEN`` (guard.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from dagnats.domain.errors import InvalidRequest
from dagnats.domain.events import (
    STEP_COMPLETED,
    STEP_CONTINUE,
    STEP_FAILED,
    STEP_WAITING,
    TASK_DECODER,
    FailureType,
    TaskPayload,
    TaskResolution,
    WaitingFor,
    encode_event,
    fact_id,
    format_timestamp,
    make_event,
)
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.run_context import run_context

from ..signals import TIMED_OUT, receive_signal
from ..task_consumer import MAX_ACK_PENDING
from ..wire.facts import publish_fact, task_dispatch
from ..wire.keys import checkpoint_key, signal_key
from ..wire.names import CHECKPOINTS_BUCKET, SIGNALS_BUCKET, TASK_STREAM, WORKERS_BUCKET
from ..wire.reading import let_go
from ..wire.subjects import task_filter
from ..wire.workers import WorkerRecord
from ..worker import DEFAULT_MAX_DELIVERIES
from .endpoints import Call, EndpointSet
from .errors import ApiError

log = logging.getLogger("dagnats.http.workers")

ROUTES = EndpointSet()
ACK_WAIT = 30.0  # as the Python SDK's default: the consumers are shared
LEASE = 60.0  # seconds a polled task waits for its worker's next word
MAX_POLL_MS = 60_000
RESOLVED_MEMORY = 4096  # task ids remembered as resolved (a second resolve is a 409)

TaskType = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Connect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task_types: Annotated[list[TaskType], Meta(min_length=1, max_length=64)]
    worker_id: TaskType | None = None
    max_tasks: Annotated[int, Meta(ge=1, le=100)] = 1


class Connected(msgspec.Struct, frozen=True):
    worker_id: str
    lease_ms: int


class Poll(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task_types: Annotated[list[TaskType], Meta(min_length=1, max_length=64)]
    worker_id: TaskType | None = None
    max_tasks: Annotated[int, Meta(ge=1, le=100)] = 1
    timeout_ms: Annotated[int, Meta(ge=0, le=MAX_POLL_MS)] = 30_000


class PolledTask(msgspec.Struct, frozen=True, omit_defaults=True):
    task_id: str
    task: str
    run_id: str
    step_id: str
    attempt: int
    iteration: int = 0
    instance: int | None = None
    input: Any = None
    workflow_name: str = ""
    step_type: str = ""
    traceparent: str = ""
    # The run's W3C tracestate and baggage, as the run was started with them.
    tracestate: str = ""
    baggage: str = ""
    metadata: dict[str, str] | None = None


class Resolution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The seed's TaskResolution (``domain.events.TaskResolution``), checked strictly."""

    action: str
    output: Any = None
    error: str = ""
    failure_type: str = "transient"
    retry_after_ms: Annotated[int, Meta(ge=0)] = 0
    duration_ms: Annotated[int, Meta(ge=0)] = 0
    checkpoint: Any = None
    data: Any = None


class Resolved(msgspec.Struct, frozen=True, omit_defaults=True):
    task_id: str
    action: str
    settled: bool
    received: bool | None = None
    data: Any = None


ACTIONS = ("complete", "fail", "continue", "checkpoint", "heartbeat", "pause", "send_signal", "wait_signal")


@dataclass(eq=False)
class Held:
    """A polled task the bridge keeps in progress until its worker resolves it."""

    task_id: str
    task: str
    msg: Msg
    payload: TaskPayload
    worker_id: str
    began: str
    last_word: float
    waits: int = 0
    keeper: asyncio.Task[None] | None = field(default=None, repr=False)


class Bridge:
    def __init__(self, js: Any) -> None:
        self.js = js
        self.held: dict[str, Held] = {}
        self.resolved: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._subs: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        for held in list(self.held.values()):
            await self._release(held, back=True)
        subs, self._subs = self._subs, {}
        for task, sub in subs.items():  # a task sent after the last poll goes back at once
            await let_go(sub, f"workers-{task}", log)

    # ---- polling -------------------------------------------------------------------

    async def _sub(self, task: str) -> Any:
        async with self._lock:
            if task not in self._subs:
                config = js_api.ConsumerConfig(
                    name=f"workers-{task}",
                    durable_name=f"workers-{task}",
                    description=f"dagnats workers of task {task}",
                    filter_subject=task_filter(task),
                    deliver_policy=js_api.DeliverPolicy.ALL,
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    ack_wait=ACK_WAIT,
                    max_deliver=DEFAULT_MAX_DELIVERIES,
                    max_ack_pending=MAX_ACK_PENDING,
                )
                with contextlib.suppress(Exception):  # exists already (a Python worker made it)
                    await self.js.add_consumer(TASK_STREAM, config)
                self._subs[task] = await self.js.pull_subscribe_bind(durable=f"workers-{task}", stream=TASK_STREAM)
            return self._subs[task]

    async def poll(self, req: Poll) -> list[PolledTask]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout_ms / 1000
        worker_id = req.worker_id or f"http-{secrets.token_hex(6)}"
        while True:
            await register(self.js, worker_id, req.task_types)
            got: list[PolledTask] = []
            wait = max(0.05, min(1.0, deadline - loop.time()) / len(req.task_types))
            for task in req.task_types:
                msgs = await self._fetch(task, req.max_tasks - len(got), wait)
                got += [t for t in (self._hold(task, m, worker_id) for m in msgs) if t is not None]
                if len(got) >= req.max_tasks:
                    break
            if got or loop.time() >= deadline:
                return got
            await asyncio.sleep(0)

    async def _fetch(self, task: str, batch: int, wait: float) -> list[Msg]:
        sub = await self._sub(task)
        try:
            return await sub.fetch(batch, timeout=wait)
        except TimeoutError:
            return []
        except NotFoundError:  # the consumer went away (server restarted): set it up again
            self._subs.pop(task, None)
            return []

    def _hold(self, task: str, msg: Msg, worker_id: str) -> PolledTask | None:
        try:
            payload = TASK_DECODER.decode(msg.data)
            check_identifier("run id", payload.run_id)
            check_identifier("step id", payload.step_id)
        except (msgspec.DecodeError, ValueError):
            asyncio.ensure_future(msg.term())
            return None
        task_id = secrets.token_hex(16)
        attempt = payload.attempt or msg.metadata.num_delivered
        payload = msgspec.structs.replace(payload, attempt=attempt)
        held = Held(task_id, task, msg, payload, worker_id, format_timestamp(_now()), _clock())
        held.keeper = asyncio.create_task(self._keep(held), name=f"bridge-{task_id}")
        self.held[task_id] = held
        return PolledTask(
            task_id=task_id,
            task=task,
            run_id=payload.run_id,
            step_id=payload.step_id,
            attempt=attempt,
            iteration=payload.iteration,
            instance=payload.instance,
            input=payload.input,
            workflow_name=payload.workflow_name,
            step_type=payload.step_type,
            traceparent=payload.traceparent,
            tracestate=payload.tracestate,
            baggage=payload.baggage,
            metadata=payload.metadata,
        )

    async def _keep(self, held: Held) -> None:
        """Keep the message in progress while its worker is heard from; else give it back."""
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            if _clock() - held.last_word > LEASE:
                p = held.payload
                with run_context(p.run_id, p.step_id, p.traceparent):
                    log.warning("HTTP worker %s went quiet on task %s: back to the queue", held.worker_id, held.task_id)
                await self._release(held, back=True, from_keeper=True)
                return
            with contextlib.suppress(Exception):
                await held.msg.in_progress()

    async def _release(self, held: Held, back: bool, delay: float = 0.0, from_keeper: bool = False) -> None:
        self.held.pop(held.task_id, None)
        self.resolved[held.task_id] = "released"
        while len(self.resolved) > RESOLVED_MEMORY:
            self.resolved.popitem(last=False)
        if held.keeper is not None and not from_keeper:
            held.keeper.cancel()
        with contextlib.suppress(Exception):
            await (held.msg.nak(delay=delay) if back else held.msg.ack())

    # ---- resolving -----------------------------------------------------------------

    async def resolve(self, task_id: str, r: Resolution) -> Resolved:
        held = self.held.get(task_id)
        if held is None:
            if task_id in self.resolved:
                raise ApiError(409, "task_already_resolved", f"task {task_id} was already resolved")
            raise ApiError(404, "task_not_found", f"no task {task_id} is held for a worker (poll for tasks first)")
        if r.action not in ACTIONS:
            raise ApiError(400, "invalid_action", f"action {r.action!r} is not one of {', '.join(ACTIONS)}")
        held.last_word = _clock()
        handler = getattr(self, f"_{r.action}")
        return await handler(held, r)

    async def _complete(self, held: Held, r: Resolution) -> Resolved:
        return await self._conclude(held, STEP_COMPLETED, r.output, r)

    async def _continue(self, held: Held, r: Resolution) -> Resolved:
        return await self._conclude(held, STEP_CONTINUE, r.output if r.output is not None else r.data, r)

    async def _fail(self, held: Held, r: Resolution) -> Resolved:
        kinds = [k.value for k in FailureType]
        if r.failure_type not in kinds:
            raise ApiError(400, "invalid_failure_type", f"failure_type must be one of {', '.join(kinds)}")
        payload: dict[str, Any] = {"error": r.error[:16_384] or "failed", "failure_type": r.failure_type}
        if r.failure_type == FailureType.RATE_LIMITED.value:
            payload["retry_after_ms"] = r.retry_after_ms
        return await self._conclude(held, STEP_FAILED, payload, r)

    async def _conclude(self, held: Held, fact: str, payload: Any, r: Resolution) -> Resolved:
        event = self._event(held, fact, payload, started_at=held.began)
        body = encode_event(event)
        if len(body) > self.js._nc.max_payload:
            raise ApiError(413, "payload_too_large", f"the {fact} fact would be {len(body)} bytes")
        await publish_fact(self.js, event, body=body, dispatch=task_dispatch(held.msg))
        await self._release(held, back=False)
        return Resolved(held.task_id, r.action, settled=True)

    def _event(self, held: Held, fact: str, payload: Any, started_at: str = "", nth: int = 1) -> Any:
        p = held.payload
        ident = fact_id(fact, p.step_id, p.attempt, p.instance)
        try:
            return make_event(
                fact,
                p.run_id,
                payload,
                step_id=p.step_id,
                timestamp=format_timestamp(_now()),
                started_at=started_at,
                trace_parent=p.traceparent,
                attempt=p.attempt,
                instance=p.instance,
                worker_id=held.worker_id,
                id=ident if nth == 1 else f"{ident}.{nth}",
            )
        except msgspec.ValidationError as err:
            raise ApiError(400, "invalid_resolution", str(err)) from None

    async def _checkpoint(self, held: Held, r: Resolution) -> Resolved:
        p = held.payload
        kv = await self.js.key_value(CHECKPOINTS_BUCKET)
        await kv.put(checkpoint_key(p.run_id, p.step_id, p.instance), msgspec.json.encode(r.checkpoint))
        return Resolved(held.task_id, r.action, settled=False)

    async def _heartbeat(self, held: Held, r: Resolution) -> Resolved:
        with contextlib.suppress(Exception):
            await held.msg.in_progress()
        return Resolved(held.task_id, r.action, settled=False)

    async def _pause(self, held: Held, r: Resolution) -> Resolved:
        """Give the task back, unfailed: it is delivered again after ``data.delay_ms``."""
        delay = _field(r.data, "delay_ms", int, 5000) / 1000
        await self._release(held, back=True, delay=max(0.0, min(delay, 3600.0)))
        return Resolved(held.task_id, r.action, settled=True)

    async def _send_signal(self, held: Held, r: Resolution) -> Resolved:
        run_id = _field(r.data, "run_id", str, held.payload.run_id)
        name = _field(r.data, "name", str, "")
        key = signal_key(check_identifier("run id", run_id), check_identifier("signal name", name))
        kv = await self.js.key_value(SIGNALS_BUCKET)
        await kv.put(key, msgspec.json.encode(r.data.get("data") if isinstance(r.data, dict) else None))
        return Resolved(held.task_id, r.action, settled=False)

    async def _wait_signal(self, held: Held, r: Resolution) -> Resolved:
        """Wait (at most 60 s per call) for a signal to this run; ask again to wait longer."""
        name = check_identifier("signal name", _field(r.data, "name", str, ""))
        timeout = max(0, min(_field(r.data, "timeout_ms", int, 30_000), MAX_POLL_MS)) / 1000
        p = held.payload

        async def waiting() -> None:
            held.waits += 1
            due = format_timestamp(_now() + timedelta(seconds=timeout))
            event = self._event(held, STEP_WAITING, WaitingFor(kind="signal", name=name, due=due), nth=held.waits)
            await publish_fact(self.js, event, dispatch=task_dispatch(held.msg))

        kv = await self.js.key_value(SIGNALS_BUCKET)
        data = await receive_signal(kv, signal_key(p.run_id, name), timeout, waiting)
        held.last_word = _clock()
        if data is TIMED_OUT:
            return Resolved(held.task_id, r.action, settled=False, received=False)
        return Resolved(held.task_id, r.action, settled=False, received=True, data=data)


def _field(data: Any, name: str, kind: type, default: Any) -> Any:
    value = data.get(name, default) if isinstance(data, dict) else default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidRequest("resolve", f"data.{name} must be a {kind.__name__}")
    return value


async def register(js: Any, worker_id: str, tasks: list[str]) -> None:
    record = WorkerRecord(
        worker_id=worker_id,
        tasks=list(tasks),
        groups=[],
        pid=os.getpid(),
        hostname=f"{socket.gethostname()} (http)",
        last_seen=format_timestamp(_now()),
    )
    with contextlib.suppress(Exception):  # the registry is for people: never fail a poll on it
        await (await js.key_value(WORKERS_BUCKET)).put(worker_id, msgspec.json.encode(record))


def bridge(call: Call) -> Bridge:
    state = call.request.app.state
    if getattr(state, "bridge", None) is None:
        state.bridge = Bridge(state.plane.js)
    return state.bridge


@ROUTES.add(
    "POST",
    "/v1/workers/connect",
    "Register an HTTP worker",
    "http workers",
    body=Connect,
    body_required=True,
    answer=Connected,
    errors=(400,),
)
async def connect(call: Call) -> Any:
    b: Connect = call.body
    worker_id = b.worker_id or f"worker-{secrets.token_hex(8)}"
    await register(bridge(call).js, worker_id, b.task_types)
    return Connected(worker_id, int(LEASE * 1000))


@ROUTES.add(
    "POST",
    "/v1/tasks/poll",
    "Long-poll for tasks (timeout_ms at most 60000)",
    "http workers",
    body=Poll,
    body_required=True,
    answer=list[PolledTask],
    errors=(400,),
)
async def poll(call: Call) -> Any:
    return await bridge(call).poll(call.body)


@ROUTES.add(
    "POST",
    "/v1/tasks/{task_id}/resolve",
    "Resolve a polled task (TaskResolution)",
    "http workers",
    body=Resolution,
    body_required=True,
    answer=Resolved,
    errors=(400, 404, 409, 413),
)
async def resolve(call: Call) -> Any:
    return await bridge(call).resolve(call.path["task_id"], call.body)


def _now() -> datetime:
    return datetime.now(UTC)


def _clock() -> float:
    return asyncio.get_running_loop().time()


# Every field of the seed's TaskResolution is accepted here.
assert {f.name for f in msgspec.structs.fields(TaskResolution)} <= {f.name for f in msgspec.structs.fields(Resolution)}
