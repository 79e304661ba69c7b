"""One task, from the fetched message to the acked one: how a handler runs and what it reports.

A handler is ``f(ctx)`` or ``f(ctx, arg: T)``, sync or async. ``TaskHandler``
reads the signature once at registration; for each task it decodes the input
into ``T`` with msgspec, calls the function, and turns the return value or the
exception into an ``Outcome``: a value makes ``step.completed``, a
``Continue(data)`` makes ``step.continue`` (``data`` is the next agent_loop
iteration's input). Input that does not decode and output that does not
encode are permanent failures: running again cannot fix them.

``TaskRunner`` takes one message through

    handler (+ step.started if it runs > 50 ms, step.waiting while it waits for a signal)
      -> [steps.added] -> step.completed | step.continue | step.failed -> ack

publishing each fact to ``inbox.<run>`` with ``Nats-Msg-Id = <run>.<fact id>.d<the
task message's stream sequence>`` (a redelivered task reports again harmlessly; a
task published again for the same attempt reports anew: ``wire.facts.fact_msg_id``).
The steps a successful handler added (``ctx.add_step``) go out as one
``steps.added`` just before its result. The task is acked only once the result's
PubAck is in; a fact NATS does not store is tried again for a while (an outage of a
few seconds), and one that still cannot be stored NAKs the task, which then runs
again (at-least-once).
``in_progress`` every ack_wait/3 keeps a long task from being redelivered to
another worker meanwhile. What the handler's ``ctx`` can do is in context.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
import typing
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.domain.errors import Permanent, RateLimited
from dagnats.domain.events import (
    STEP_COMPLETED,
    STEP_CONTINUE,
    STEP_FAILED,
    STEP_STARTED,
    STEPS_ADDED,
    TASK_DECODER,
    Event,
    FailureType,
    TaskPayload,
    encode_event,
    fact_id,
    format_timestamp,
    make_event,
)
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.run_context import run_context
from dagnats.domain.trace_context import baggage_items

from . import metrics
from .added_steps import AddedSteps
from .context import Continue, TaskContext, TaskIO
from .delivery_span import delivery_span, record_outcome
from .tracing import incoming_baggage, incoming_state
from .wire.facts import publish_fact, task_dispatch
from .wire.handoff import RESULT_FACTS, hand_over
from .wire.headers import BAGGAGE, HANDOFF, TRACEPARENT, TRACESTATE
from .wire.lean import ack, requester
from .wire.outage import NATS_UNAVAILABLE
from .wire.subjects import inbox_subject

log = logging.getLogger("dagnats.worker")

MAX_ERROR_CHARS = 16_384  # the engine keeps less; this only keeps a fact under max_payload
STARTED_REPORT_DELAY = 0.05  # seconds a handler runs before its step.started is sent
# Seconds a fact NATS does not store (a node lost, a leader being elected) is tried again
# before the task is NAKed, to run again: an outage of a few seconds costs no second run.
REPORT_RETRY_FOR = 20.0


class Outcome(msgspec.Struct, frozen=True):
    """A fact about one execution: its type and payload."""

    type: str
    payload: Any = None

    @property
    def failed(self) -> bool:
        return self.type == STEP_FAILED


def failure(error: str, failure_type: FailureType, retry_after_ms: int | None = None) -> Outcome:
    """A ``step.failed`` outcome with the payload the engine folds."""
    payload: dict[str, Any] = {"error": error[:MAX_ERROR_CHARS], "failure_type": failure_type.value}
    if retry_after_ms is not None:
        payload["retry_after_ms"] = retry_after_ms
    return Outcome(STEP_FAILED, payload)


class TaskHandler:
    """One registered handler: its input type, and how to call it."""

    def __init__(self, task: str, func: Callable[..., Any]) -> None:
        self.task, self.func = task, func
        self.is_async = inspect.iscoroutinefunction(func)
        self.takes_input, self.input_type = _input_parameter(task, func)

    async def __call__(self, ctx: TaskContext, data: Any, executor: Executor) -> Outcome:
        """Decode ``data``, run the handler and encode its result; never raises."""
        args: tuple[Any, ...] = (ctx,)
        if self.takes_input:
            try:
                args += (data if self.input_type is Any else msgspec.convert(data, self.input_type),)
            except msgspec.ValidationError as err:
                shown = _type_name(self.input_type)
                return failure(f"input does not match {shown}: {err}", FailureType.PERMANENT)
        try:
            result = await self._call(args, executor)
        except Permanent as err:
            return failure(str(err), FailureType.PERMANENT)
        except RateLimited as err:
            return failure(str(err), FailureType.RATE_LIMITED, round(err.retry_after * 1000))
        except Exception as err:  # noqa: BLE001 - any other error is the engine's to retry
            return failure(f"{type(err).__name__}: {err}", FailureType.TRANSIENT)
        return _result(ctx, result)

    async def _call(self, args: tuple[Any, ...], executor: Executor) -> Any:
        if self.is_async:
            return await self.func(*args)
        # Sync handlers run in the pool; the copied context carries the span.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, context.run, self.func, *args)


def _result(ctx: TaskContext, result: Any) -> Outcome:
    """The fact a handler's return value makes."""
    if isinstance(result, Continue):
        # Only an agent_loop goes on after step.continue; any other step would wait for ever.
        if ctx.step_type and ctx.step_type != "agent_loop":
            return failure(
                f"Continue is for agent_loop steps; step {ctx.step_id} is a {ctx.step_type} step",
                FailureType.PERMANENT,
            )
        fact, value, what = STEP_CONTINUE, result.data, "Continue data"
    else:
        fact, value, what = STEP_COMPLETED, result, "output"
    try:
        return Outcome(fact, msgspec.to_builtins(value))
    except (TypeError, ValueError, OverflowError) as err:
        return failure(f"{what} does not encode as JSON: {err}", FailureType.PERMANENT)


class TaskRunner:
    """Runs one fetched task message through its handler and reports the facts."""

    def __init__(self, js: JetStreamContext, worker_id: str, ack_wait: float, executor: Executor) -> None:
        self.js, self.worker_id, self.ack_wait, self.executor = js, worker_id, ack_wait, executor
        self._buckets: dict[str, KeyValue] = {}
        metrics.setup_metrics("dagnats-worker")  # exports the handlers in flight if configured

    async def run(self, msg: Msg, task: str, handler: TaskHandler) -> None:
        """Execute the task in ``msg`` and settle the message (ack, nak or term)."""
        payload = await self._payload(msg)
        if payload is None:
            return
        ctx, io = self._context(msg, task, payload)
        metrics.TASKS_RUNNING.add(task)
        try:
            with run_context(ctx.run_id, ctx.step_id, ctx.trace_parent):
                await self._run(msg, ctx, io, payload, handler)
        finally:
            metrics.TASKS_RUNNING.add(task, -1)

    async def _run(self, msg: Msg, ctx: TaskContext, io: TaskIO, payload: TaskPayload, handler: TaskHandler) -> None:
        keep_alive = _KeepAlive(msg, self.ack_wait / 3)
        # step.started goes out only if the handler is still running after a short
        # while (the engine needs it for timeouts and to show the step running); a
        # quick step reports its start time with its result instead: two stored
        # writes and one history append less on every such step.
        began = format_timestamp(datetime.now(UTC))
        dispatch = task_dispatch(msg)
        started: list[asyncio.Future] = []
        delay = min(STARTED_REPORT_DELAY, payload.timeout_ns / 2e9) if payload.timeout_ns else STARTED_REPORT_DELAY

        def report_started() -> None:
            started.append(asyncio.ensure_future(self._report(ctx, Outcome(STEP_STARTED), began, dispatch=dispatch)))

        report_start = asyncio.get_running_loop().call_later(delay, report_started)
        try:
            outcome = await self._invoke(handler, ctx, payload, msg)
            report_start.cancel()
            if started:
                await started[0]
            stored = await self._conclude(
                ctx,
                outcome,
                io.added,
                started_at="" if started else began,
                handoff=(msg.headers or {}).get(HANDOFF),
                dispatch=dispatch,
            )
        finally:
            report_start.cancel()
            keep_alive.cancel()
            io.close()
        await settle(ack(msg) if stored else msg.nak(delay=random.uniform(1.0, 5.0)))

    async def _payload(self, msg: Msg) -> TaskPayload | None:
        try:
            payload = TASK_DECODER.decode(msg.data)
            inbox_subject(payload.run_id)
            check_identifier("step id", payload.step_id)
        except (msgspec.DecodeError, ValueError) as err:
            log.warning("terminating malformed task on %s: %s", msg.subject, err)
            await settle(msg.term())
            return None
        return payload

    def _context(self, msg: Msg, task: str, payload: TaskPayload) -> tuple[TaskContext, TaskIO]:
        loop = asyncio.get_running_loop()

        def beat() -> None:
            if not loop.is_closed():  # else the worker has stopped: nothing to extend
                asyncio.run_coroutine_threadsafe(settle(msg.in_progress()), loop)

        async def report(ctx: TaskContext, fact: str, data: Any, nth: int) -> bool:
            return await self._report(ctx, Outcome(fact, data), nth=nth, dispatch=task_dispatch(msg))

        io = TaskIO(loop, self._bucket, report, beat, AddedSteps(payload.step_id))
        headers = msg.headers or {}
        ctx = TaskContext(
            run_id=payload.run_id,
            step_id=payload.step_id,
            attempt=payload.attempt or msg.metadata.num_delivered,
            task=task,
            worker_id=self.worker_id,
            workflow_name=payload.workflow_name,
            trace_parent=headers.get(TRACEPARENT) or payload.traceparent,
            iteration=payload.iteration,
            instance=payload.instance,
            metadata=dict(payload.metadata or {}),
            step_type=payload.step_type,
            trace_state=incoming_state(headers.get(TRACESTATE) or payload.tracestate, f"task {payload.task_id}"),
            baggage=baggage_items(incoming_baggage(headers.get(BAGGAGE) or payload.baggage, f"task {payload.task_id}")),
            _io=io,
        )
        return ctx, io

    async def _bucket(self, name: str) -> KeyValue:
        """The KV bucket ``name``, looked up once per worker."""
        if name not in self._buckets:
            self._buckets[name] = await self.js.key_value(name)
        return self._buckets[name]

    async def _invoke(self, handler: TaskHandler, ctx: TaskContext, payload: TaskPayload, msg: Msg) -> Outcome:
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        with delivery_span(ctx, payload, msg.subject, delivered) as span:
            outcome = await handler(ctx, payload.input, self.executor)
            record_outcome(span, outcome.type, outcome.failed, outcome.payload)
        if outcome.failed:
            kind, error = outcome.payload["failure_type"], outcome.payload["error"]
            level = logging.WARNING if kind == FailureType.PERMANENT.value else logging.INFO
            log.log(
                level,
                "task %s run %s step %s attempt %d failed (%s): %s",
                ctx.task,
                ctx.run_id,
                ctx.step_id,
                ctx.attempt,
                kind,
                error,
            )
        return outcome

    async def _conclude(
        self,
        ctx: TaskContext,
        outcome: Outcome,
        added: AddedSteps,
        started_at: str,
        handoff: str | None = None,
        dispatch: int = 0,
    ) -> bool:
        """Report the attempt's result, after the steps it added if it succeeded; True once stored.

        Sizes are checked before anything is sent: a result or a set of added
        steps too large to report fails the attempt, which then adds nothing.
        A lone result goes straight to the run's owner when the task names one
        (``handoff``), else (or if the owner does not say it stored it) to the inbox.
        """
        result = self._event(ctx, outcome, started_at=started_at)
        facts = [(result, encode_event(result), _RESULT_NAMES.get(outcome.type, outcome.type))]
        fragment = None if outcome.failed else added.fragment()
        if fragment is not None:
            steps = self._event(ctx, Outcome(STEPS_ADDED, fragment))
            facts.insert(0, (steps, encode_event(steps), f"the {len(fragment.steps)} added steps"))
        limit = self.js._nc.max_payload
        too_large = [
            f"{what} too large: {len(body)} bytes, over max_payload {limit}"
            for _, body, what in facts
            if len(body) > limit
        ]
        if too_large and not outcome.failed:  # running again cannot shrink them
            too_large_failure = failure(too_large[0], FailureType.PERMANENT)
            return await self._report(ctx, too_large_failure, started_at=started_at, dispatch=dispatch)
        if handoff and len(facts) == 1 and outcome.type in RESULT_FACTS:
            event, body, _ = facts[0]
            if await hand_over(requester(self.js), handoff, body, event.trace_parent):
                return True
        for event, body, _ in facts:
            if not await self._publish(event, body, dispatch):
                return False
        return True

    async def _report(
        self, ctx: TaskContext, outcome: Outcome, at: str = "", started_at: str = "", nth: int = 1, dispatch: int = 0
    ) -> bool:
        """Publish one fact to the run's inbox; True once JetStream has stored it.

        ``nth``: the attempt's nth fact of this type (its id gets ``.<nth>`` after the
        first), for facts an attempt may report more than once (step.waiting);
        ``dispatch``: the task message's stream sequence (``task_dispatch``).
        """
        event = self._event(ctx, outcome, at, started_at, nth)
        return await self._publish(event, encode_event(event), dispatch)

    def _event(self, ctx: TaskContext, outcome: Outcome, at: str = "", started_at: str = "", nth: int = 1) -> Event:
        fact = fact_id(outcome.type, ctx.step_id, ctx.attempt, ctx.instance)
        return make_event(
            outcome.type,
            ctx.run_id,
            outcome.payload,
            step_id=ctx.step_id,
            timestamp=at or format_timestamp(datetime.now(UTC)),
            started_at=started_at,
            trace_parent=ctx.trace_parent,
            attempt=ctx.attempt,
            instance=ctx.instance,
            worker_id=self.worker_id,
            id=fact if nth == 1 else f"{fact}.{nth}",
        )

    async def _publish(self, event: Event, body: bytes, dispatch: int = 0) -> bool:
        """Store one fact in the run's inbox; True once stored. While NATS does not answer it
        tries again (``REPORT_RETRY_FOR``; the keep-alive holds the task meanwhile): the same
        message id, so a fact stored whose answer was lost is stored once."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + REPORT_RETRY_FOR, 0.1
        while True:
            try:
                await publish_fact(self.js, event, body=body, dispatch=dispatch)
                return True
            except NATS_UNAVAILABLE as err:
                if loop.time() + pause > deadline:
                    log.warning("cannot report %s for run %s: %s", event.type, event.run_id, describe(err))
                    return False  # the task is NAKed and runs again
                log.info("reporting %s for run %s: %s; trying again", event.type, event.run_id, describe(err))
            except Exception as err:  # noqa: BLE001 - the task is NAKed and runs again
                log.warning("cannot report %s for run %s: %s", event.type, event.run_id, describe(err))
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


# What a successful result's payload is, in "... too large".
_RESULT_NAMES = {STEP_COMPLETED: "output", STEP_CONTINUE: "Continue data"}


class _KeepAlive:
    """Tells JetStream every ``every`` seconds that the task is still being worked on,
    until cancelled: a timer on the loop, re-armed when it fires (no task per message)."""

    __slots__ = ("beat", "every", "msg", "timer")

    def __init__(self, msg: Msg, every: float) -> None:
        self.msg, self.every = msg, every
        self.beat: asyncio.Future[None] | None = None  # held: the loop keeps only a weak reference
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(every, self._beat)

    def _beat(self) -> None:
        self.beat = asyncio.ensure_future(settle(self.msg.in_progress()))
        if self.timer is not None:
            self.timer = asyncio.get_running_loop().call_later(self.every, self._beat)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def settle(coro: Coroutine[Any, Any, Any]) -> None:
    """Await an ack, nak or in_progress; losing one is safe (JetStream redelivers)."""
    try:
        await coro
    except Exception as err:  # noqa: BLE001
        log.debug("ack call failed: %s", describe(err))


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _input_parameter(task: str, func: Callable[..., Any]) -> tuple[bool, Any]:
    """Whether ``func`` takes an input argument, and the type to decode it into."""
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise TypeError(
            f"handler for task {task!r} must take (ctx) or (ctx, input), "
            f"not {len(params)} required positional parameters"
        )
    if len(params) == 1:
        return False, Any
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an unresolvable hint falls back to the raw annotation
        hints = {}
    annotation = hints.get(params[1].name, params[1].annotation)
    if isinstance(annotation, str):
        raise TypeError(f"handler for task {task!r}: cannot resolve the annotation {annotation!r}")
    return True, Any if annotation is inspect.Parameter.empty else annotation


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return repr(tp).replace("typing.", "")
