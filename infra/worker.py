"""The worker SDK: run task handlers on the tasks the engine dispatches.

Theory of operation. Every (task, group) pair has one durable pull consumer
on TASK_QUEUES, ``workers-<task>[-<group>]``, shared by all worker processes
of that task; one fetch loop per consumer pulls as many messages as the worker
has free execution slots (``max_concurrent`` in all, across every task). Each
message becomes one execution:

    step.started -> handler -> step.completed | step.failed -> ack

Facts go to ``inbox.<run>`` with ``Nats-Msg-Id = <run>.<fact id>``, so a
redelivered task reports again harmlessly. The task is acked only once the
result fact's PubAck is in; if that publish fails the task is NAKed and will
run again (at-least-once). The worker never retries by itself: the engine
decides retries from the failure type. While a handler runs, ``in_progress``
every ack_wait/3 keeps JetStream from redelivering it to another worker.

A user file defines one ``Worker`` at top level and calls ``w.run()`` only
under ``if __name__ == "__main__":``; ``dagnats worker FILE.py`` imports it
with ``load_worker`` and runs it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext, api
from opentelemetry import propagate, trace

from dagnats.domain.errors import TaskAlreadyRegistered, WorkerLoadError
from dagnats.domain.events import (
    EVENT_ENCODER,
    STEP_STARTED,
    TASK_DECODER,
    Event,
    FailureType,
    TaskPayload,
    fact_id,
    format_timestamp,
)
from dagnats.domain.identifiers import check_identifier

from .headers import MSG_ID, TRACEPARENT
from .resources import INBOX_STREAM, TASK_STREAM, inbox_subject
from .task_context import Outcome, Permanent, RateLimited, TaskContext, TaskHandler, failure

__all__ = ["Worker", "TaskContext", "Permanent", "RateLimited", "load_worker"]

log = logging.getLogger("dagnats.worker")
_tracer = trace.get_tracer("dagnats.worker")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
FETCH_TIMEOUT = 1.0  # short: a stop waits at most this long for the fetch loops
MAX_BATCH = 100
STALL_MARGIN = 5.0  # a fetch this much past its timeout is stuck (nats.py #933, #986)
MAX_ACK_PENDING = 1000

F = TypeVar("F", bound=Callable[..., Any])

# Set while load_worker imports a file: run() at import time is then an error.
_loading: ContextVar[str | None] = ContextVar("dagnats_loading_worker", default=None)


class Worker:
    """Runs task handlers for the engine; see the module docstring."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        max_concurrent: int = 10,
        groups: list[str] | None = None,
        worker_id: str | None = None,
        ack_wait: float = 30.0,
        drain_timeout: float = 30.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if ack_wait <= 0:
            raise ValueError(f"ack_wait must be positive, not {ack_wait}")
        self.nats_url = nats_url or os.environ.get("DAGNATS_NATS_URL") or DEFAULT_NATS_URL
        self.max_concurrent = max_concurrent
        self.groups = [check_identifier("worker group", g) for g in groups or []]
        self.worker_id = worker_id or f"worker-{secrets.token_hex(8)}"
        self.ack_wait = float(ack_wait)
        self.drain_timeout = float(drain_timeout)
        self._handlers: dict[str, TaskHandler] = {}
        self._nc: nats.NATS | None = None
        self._js: JetStreamContext | None = None
        self._stopping = False
        self._subs: list[_Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None], Msg] = {}

    @property
    def tasks(self) -> list[str]:
        """The task names this worker has handlers for."""
        return list(self._handlers)

    def task(self, name: str) -> Callable[[F], F]:
        """Decorator: register ``func(ctx[, input])`` as the handler of task ``name``."""
        check_identifier("task name", name)

        def register(func: F) -> F:
            if name in self._handlers:
                raise TaskAlreadyRegistered(name)
            if self._nc is not None:
                raise RuntimeError(f"register task {name!r} before the worker starts")
            self._handlers[name] = TaskHandler(name, func)
            return func

        return register

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> None:
        """Connect, work until SIGINT/SIGTERM, then drain; blocks."""
        if (path := _loading.get()) is not None:
            raise WorkerLoadError(
                path, cause='Worker.run() called at import; guard it with if __name__ == "__main__":'
            )
        try:
            asyncio.run(self._run_until_signalled())
        except KeyboardInterrupt:  # a second Ctrl-C, or no signal handlers off the main thread
            pass

    async def _run_until_signalled(self) -> None:
        await self.start()
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await stop.wait()
        finally:
            for sig in signals:
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
            await self.stop()

    async def start(self) -> None:
        """Connect, ensure the consumers and start fetching; returns at once."""
        if not self._handlers:
            raise RuntimeError("no tasks registered: decorate a handler with @worker.task(name)")
        if self._nc is not None:
            raise RuntimeError(f"worker {self.worker_id} is already started")
        self._nc = await nats.connect(
            self.nats_url,
            name=self.worker_id,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._slots = _Slots(self.max_concurrent)
        self._executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="dagnats-task")
        self._subs = [
            _Subscription(task, group, handler)
            for task, handler in self._handlers.items()
            for group in self.groups or [None]
        ]
        await asyncio.gather(*(self._ensure(sub) for sub in self._subs))
        self._loops = [
            asyncio.create_task(self._consume(sub), name=f"fetch-{sub.consumer}") for sub in self._subs
        ]
        log.info("worker %s started: %s on %s", self.worker_id, ", ".join(self.tasks), self.nats_url)

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (up to drain_timeout), close."""
        if self._nc is None:
            return
        self._stopping = True
        self._stopped.set()
        self._slots.close()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._running:
            log.info("worker %s draining %d running tasks", self.worker_id, len(self._running))
            _, late = await asyncio.wait(list(self._running), timeout=self.drain_timeout)
            await self._abandon(late)
        try:
            await self._nc.flush(timeout=2)
        except Exception:  # noqa: BLE001 - nothing left to save on a dead connection
            pass
        await self._nc.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._nc = self._js = None
        log.info("worker %s stopped", self.worker_id)

    async def _abandon(self, late: set[asyncio.Task[None]]) -> None:
        """Return tasks still running after drain_timeout to the queue, for another worker."""
        if not late:
            return
        log.warning("worker %s: %d tasks outlived the drain timeout; returning them", self.worker_id, len(late))
        msgs = [self._running[task] for task in late]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*(_settle(msg.nak()) for msg in msgs))

    # -- consuming -----------------------------------------------------------

    async def _ensure(self, sub: _Subscription) -> bool:
        """Create or update the shared consumer, and bind a fresh pull subscription to it."""
        assert self._js is not None
        config = api.ConsumerConfig(
            name=sub.consumer,
            durable_name=sub.consumer,
            description=f"dagnats workers of task {sub.task}",
            filter_subject=sub.filter_subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
        )
        try:
            await self._js.add_consumer(TASK_STREAM, config)
            if sub.pull is not None:
                await _settle(sub.pull.unsubscribe())
            sub.pull = await self._js.pull_subscribe_bind(durable=sub.consumer, stream=TASK_STREAM)
        except Exception as err:  # noqa: BLE001 - retried by the fetch loop
            log.warning("consumer %s on %s not ready: %s", sub.consumer, TASK_STREAM, _describe(err))
            sub.stale = True
            return False
        sub.stale = False
        return True

    async def _consume(self, sub: _Subscription) -> None:
        failures = 0
        while not self._stopping:
            if sub.stale and not await self._ensure(sub):
                failures += 1
                await self._pause(failures)
                continue
            reserved = await self._slots.take(1 if sub.idle else MAX_BATCH)
            if not reserved:
                return
            try:
                msgs = await self._fetch(sub, reserved)
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one failure
                self._slots.give(reserved)
                failures += 1
                log.warning("fetch from %s failed: %s", sub.consumer, _describe(err))
                sub.stale = True
                await self._pause(failures)
                continue
            failures = 0
            self._dispatch(sub, msgs, reserved)

    async def _fetch(self, sub: _Subscription, batch: int) -> list[Msg]:
        assert sub.pull is not None
        began = time.monotonic()
        try:
            return await asyncio.wait_for(
                sub.pull.fetch(batch, timeout=FETCH_TIMEOUT), FETCH_TIMEOUT + STALL_MARGIN
            )
        except asyncio.TimeoutError:  # nats' own fetch timeout is one: no messages
            if time.monotonic() - began >= FETCH_TIMEOUT + STALL_MARGIN:
                raise _FetchStalled(time.monotonic() - began) from None
            return []

    def _dispatch(self, sub: _Subscription, msgs: list[Msg], reserved: int) -> None:
        # A fetch can return messages an earlier, expired pull left in the
        # subscription's queue: more than we hold slots for goes back at once.
        taken, extra = msgs[:reserved], msgs[reserved:]
        self._slots.give(reserved - len(taken))
        sub.idle = not msgs
        for msg in extra:
            _spawn(_settle(msg.nak()))
        for msg in taken:
            task = asyncio.create_task(self._execute(sub, msg))
            self._running[task] = msg
            task.add_done_callback(self._running.pop)

    async def _pause(self, failures: int) -> None:
        """Back off after a failure; returns early when the worker stops."""
        delay = min(5.0, 0.25 * 2**failures)
        try:
            await asyncio.wait_for(self._stopped.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # -- one task --------------------------------------------------------------

    async def _execute(self, sub: _Subscription, msg: Msg) -> None:
        try:
            await self._handle(sub, msg)
        except Exception:  # noqa: BLE001 - unreported: JetStream redelivers after ack_wait
            log.exception("task on %s failed in the worker itself", msg.subject)
        finally:
            self._slots.give(1)

    async def _handle(self, sub: _Subscription, msg: Msg) -> None:
        payload = await self._payload(msg)
        if payload is None:
            return
        if self._stopping:  # fetched, not started: back to the queue
            await _settle(msg.nak())
            return
        ctx = self._context(sub, msg, payload)
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            if not await self._report(ctx, Outcome(STEP_STARTED)):
                await _settle(msg.nak(delay=1.0))
                return
            stored = await self._report(ctx, await self._run_handler(sub.handler, ctx, payload))
        finally:
            keep_alive.cancel()
        if stored:
            await _settle(msg.ack())
        else:
            await _settle(msg.nak(delay=random.uniform(1.0, 5.0)))

    async def _payload(self, msg: Msg) -> TaskPayload | None:
        try:
            payload = TASK_DECODER.decode(msg.data)
            inbox_subject(payload.run_id)
            check_identifier("step id", payload.step_id)
        except (msgspec.DecodeError, ValueError) as err:
            log.warning("terminating malformed task on %s: %s", msg.subject, err)
            await _settle(msg.term())
            return None
        return payload

    def _context(self, sub: _Subscription, msg: Msg, payload: TaskPayload) -> TaskContext:
        loop = asyncio.get_running_loop()

        def beat() -> None:
            try:
                asyncio.run_coroutine_threadsafe(_settle(msg.in_progress()), loop)
            except RuntimeError:  # the loop is closed: the worker has stopped
                pass

        return TaskContext(
            run_id=payload.run_id,
            step_id=payload.step_id,
            attempt=payload.attempt or msg.metadata.num_delivered,
            task=sub.task,
            worker_id=self.worker_id,
            workflow_name=payload.workflow_name,
            trace_parent=(msg.headers or {}).get(TRACEPARENT) or payload.traceparent,
            _beat=beat,
        )

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            await _settle(msg.in_progress())

    async def _run_handler(self, handler: TaskHandler, ctx: TaskContext, payload: TaskPayload) -> Outcome:
        parent = propagate.extract({"traceparent": ctx.trace_parent}) if ctx.trace_parent else None
        attributes = {"dagnats.run_id": ctx.run_id, "dagnats.step_id": ctx.step_id, "dagnats.attempt": ctx.attempt}
        with _tracer.start_as_current_span(
            f"executeTask {ctx.task}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            outcome = await handler(ctx, payload.input, self._executor)
            if outcome.failed:
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.payload["error"]))
        if outcome.failed:
            kind, error = outcome.payload["failure_type"], outcome.payload["error"]
            level = logging.WARNING if kind == FailureType.PERMANENT.value else logging.INFO
            log.log(level, "task %s run %s step %s attempt %d failed (%s): %s",
                    ctx.task, ctx.run_id, ctx.step_id, ctx.attempt, kind, error)
        return outcome

    async def _report(self, ctx: TaskContext, outcome: Outcome) -> bool:
        """Publish one fact to the run's inbox; True once JetStream has stored it."""
        assert self._js is not None
        event = Event(
            type=outcome.type,
            run_id=ctx.run_id,
            step_id=ctx.step_id,
            timestamp=format_timestamp(datetime.now(timezone.utc)),
            payload=outcome.payload,
            trace_parent=ctx.trace_parent,
            attempt=ctx.attempt,
            worker_id=self.worker_id,
            id=fact_id(outcome.type, ctx.step_id, ctx.attempt),
        )
        headers = {MSG_ID: f"{ctx.run_id}.{event.id}"}
        if ctx.trace_parent:
            headers[TRACEPARENT] = ctx.trace_parent
        try:
            await self._js.publish(
                inbox_subject(ctx.run_id), EVENT_ENCODER.encode(event), stream=INBOX_STREAM, headers=headers
            )
        except MaxPayloadError as err:
            if not outcome.failed:  # rerunning cannot shrink the output
                return await self._report(ctx, failure(f"output too large: {err}", FailureType.PERMANENT))
            log.warning("cannot report %s for run %s step %s: %s", outcome.type, ctx.run_id, ctx.step_id, err)
            return False
        except Exception as err:  # noqa: BLE001 - the task is NAKed and runs again
            log.warning("cannot report %s for run %s step %s: %s", outcome.type, ctx.run_id, ctx.step_id, _describe(err))
            return False
        return True

    # -- connection callbacks ------------------------------------------------

    async def _on_error(self, err: Exception) -> None:
        log.warning("worker %s: NATS error: %s", self.worker_id, _describe(err))

    async def _on_disconnected(self) -> None:
        log.info("worker %s disconnected from NATS; reconnecting", self.worker_id)

    async def _on_reconnected(self) -> None:
        log.info("worker %s reconnected to NATS", self.worker_id)
        for sub in self._subs:
            sub.stale = True  # the server may have lost or rebuilt the consumer


@dataclass(eq=False)
class _Subscription:
    """One shared consumer and this worker's fetch state for it."""

    task: str
    group: str | None
    handler: TaskHandler
    pull: JetStreamContext.PullSubscription | None = None
    stale: bool = True
    idle: bool = True  # the last fetch was empty: ask for one message, hold one slot

    @property
    def consumer(self) -> str:
        return f"workers-{self.task}" if self.group is None else f"workers-{self.task}-{self.group}"

    @property
    def filter_subject(self) -> str:
        return f"task.{self.task}.*" if self.group is None else f"task.{self.task}.{self.group}.*"


class _Slots:
    """Execution slots shared by all fetch loops, granted first come, first served."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    async def take(self, most: int) -> int:
        """Wait for one free slot, then take up to ``most``; 0 once closed."""
        granted = 0
        if self._waiters or not self.free:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                if not await waiter:
                    return 0
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self.give(1)
                raise
            granted = 1
        if self._closed:
            self.give(granted)
            return 0
        extra = min(most - granted, self.free)
        self.free -= extra
        return granted + extra

    def give(self, count: int) -> None:
        self.free += count
        while self.free and self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= 1
                waiter.set_result(True)

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)


class _FetchStalled(RuntimeError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"fetch stalled for {seconds:.1f} s; resubscribing")


async def _settle(coro: Coroutine[Any, Any, Any]) -> None:
    """Await an ack/nak/in_progress; losing one is safe (JetStream redelivers)."""
    try:
        await coro
    except Exception as err:  # noqa: BLE001
        log.debug("ack call failed: %s", _describe(err))


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# -- loading a user's worker file ----------------------------------------------


def load_worker(path: str) -> Worker:
    """Import the Python file at ``path`` and return the one Worker it defines at top level."""
    file = Path(path).resolve()
    if not file.is_file():
        raise WorkerLoadError(path, cause="no such file")
    name = f"_dagnats_worker_{file.stem}_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise WorkerLoadError(path, cause="not a Python file")
    module = importlib.util.module_from_spec(spec)
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    sys.modules[name] = module  # dataclasses and msgspec resolve annotations through it
    token = _loading.set(path)
    try:
        spec.loader.exec_module(module)
    except WorkerLoadError:
        raise
    except Exception as err:
        sys.modules.pop(name, None)
        raise WorkerLoadError(path, cause=_describe(err)) from err
    finally:
        _loading.reset(token)
    found: dict[int, list[str]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Worker):
            found.setdefault(id(value), []).append(attr)
    if len(found) != 1:
        raise WorkerLoadError(path, names=[names[0] for names in found.values()])
    return next(v for v in vars(module).values() if isinstance(v, Worker))
