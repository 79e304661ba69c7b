"""ReactiveRuntime: NATS inputs -> decide -> one conditional history record -> effects.

    KV watch | subject | JetStream consumer | reactive.inbox.<id> (callbacks, timers)
        -> Input -> per-execution lock -> decide -> append history.<id>
        -> publish, timer, state KV, index entry (last)

Each execution is served under its own lock, from a cache of (execution, last
sequence) rebuilt by replaying its history. Effects happen only after the
record that decided them is stored, each message with a Nats-Msg-Id derived
from the record; the execution's entry in the index is written last, so an
entry that matches the history means the effects were done. After a crash,
``recover`` publishes the last record of every open execution again
(at-least-once; JetStream subjects drop the copy), re-arms its timeout, and
finishes the effects of an ended one whose entry is stale. Durable inputs (KV revisions, stream sequences) are
acknowledged after the record, and a position already folded fires nothing.
The engine's own state writes go to the state bucket, which no watcher of
this runtime consumes: rules on the own state run as cascades inside decide.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import format_timestamp, parse_timestamp
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.reactive.decide import Input, callback_subject, decide, execution_id
from dagnats.domain.reactive.events import CallbackApplied, ExecutionCreated, ExecutionEnded, ReactiveEvent, RuleFired
from dagnats.domain.reactive.fold import Execution, fold
from dagnats.domain.reactive.registry import ReactiveRegistry
from dagnats.domain.reactive.rules import Rule
from dagnats.domain.reactive.state import TriggerMode, is_terminal_status
from dagnats.domain.reactive.workflow import ReactiveWorkflow

from ..engine.streams import ensure_resources
from ..wire.headers import MSG_ID
from ..wire.reading import kv_entries, let_go, pulled
from ..wire.timers import arm_schedule, cancel_schedule
from .metrics import ReactiveMetrics
from .store import append_record, load_execution
from .views import EXECUTIONS_BUCKET, execution_summary

log = logging.getLogger("dagnats.reactive")

REACTIVE_STREAM = "REACTIVE"
WORKFLOWS_BUCKET = "reactive_workflows"
_JSON = msgspec.json.Encoder()


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


class _Source:
    """Rules of one workflow that share one trigger: an input is matched against all of them."""

    def __init__(self, wf: ReactiveWorkflow, rule: Rule) -> None:
        self.wf, self.trigger, self.rules = wf, rule.trigger, [rule]


class ReactiveRuntime:
    def __init__(
        self,
        nc: NATS,
        registry: ReactiveRegistry,
        clock: Callable[[], str] = _now,
        metrics: ReactiveMetrics | None = None,
    ) -> None:
        self.nc, self.registry, self.clock = nc, registry, clock
        self.js = nc.jetstream()
        self.metrics = metrics or ReactiveMetrics()
        self._cache: dict[str, tuple[Execution, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        # Unsubscribe every subscription (core, pull, KV watch) at stop: a left one would
        # keep nc.drain() waiting for messages no task will take.
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_resources(self.js)
        await self._ensure_stream()
        for bucket in {WORKFLOWS_BUCKET, EXECUTIONS_BUCKET, *self._buckets()}:
            await self._bucket(bucket)
        workflows = await self.js.key_value(WORKFLOWS_BUCKET)
        for wf in self.registry.all():
            await workflows.put(wf.id, _JSON.encode(wf.describe()))
        await self.recover()
        for source in self._sources():
            await self._start_source(source)
        await self._consume(REACTIVE_STREAM, "reactive.inbox.>", "reactive-inbox", self._on_inbox)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for close in self._closers:
            try:
                await close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    async def _ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=REACTIVE_STREAM,
            subjects=["reactive.inbox.>", "reactive.schedule.>"],  # callbacks and timeouts; timers
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            allow_msg_schedules=True,
            allow_direct=True,
            max_age=7 * 24 * 3600.0,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            pass

    async def _bucket(self, bucket: str) -> Any:
        try:
            return await self.js.key_value(bucket)
        except (NotFoundError, BadRequestError, APIError):
            return await self.js.create_key_value(api.KeyValueConfig(bucket=bucket, history=1, direct=True))

    def _buckets(self) -> set[str]:
        found = set()
        for wf in self.registry.all():
            found.add(wf.state_bucket)
            found.update(r.trigger.watch_bucket for r in wf.rules if r.trigger.watch_bucket)
        return found

    def _sources(self) -> list[_Source]:
        sources: dict[tuple[Any, ...], _Source] = {}
        for wf in self.registry.all():
            for rule in wf.rules:
                t = rule.trigger
                if not t.subject and t.watch_bucket == wf.state_bucket:
                    continue  # rules on the own state run as cascades, never from the watch
                key = (wf.id, t.watch_bucket, t.watch_pattern, t.subject, t.stream)
                if key in sources:
                    sources[key].rules.append(rule)
                else:
                    sources[key] = _Source(wf, rule)
        return list(sources.values())

    async def _start_source(self, source: _Source) -> None:
        t = source.trigger
        if t.watch_bucket:
            self._tasks.append(asyncio.create_task(self._watch(source)))
        elif t.stream:
            durable = f"reactive-{source.wf.id}-{source.rules[0].id}"
            await self._consume(t.stream, t.subject, durable, lambda msg: self._on_message(source, msg, True))
        else:

            async def on_core(msg: Any) -> None:
                await self._on_message(source, msg, False)

            self._closers.append((await self.nc.subscribe(t.subject, cb=on_core)).unsubscribe)

    async def _consume(self, stream: str, subject: str, durable: str, handler: Callable[[Any], Any]) -> None:
        config = api.ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            max_ack_pending=1000,
            ack_wait=30,
        )
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        self._closers.append(functools.partial(let_go, sub, durable, log))
        self._tasks.append(asyncio.create_task(self._pull(sub, handler)))

    async def _pull(self, sub: Any, handler: Callable[[Any], Any]) -> None:
        while not self._stopping:
            msgs = await pulled(sub, 100, "fetch", log)
            if msgs is None:
                return
            for msg in msgs:  # in order: positions only grow
                try:
                    await handler(msg)
                    await msg.ack()
                except Exception:  # noqa: BLE001 - redelivered later
                    log.exception("input on %s not handled", msg.subject)

    async def _watch(self, source: _Source) -> None:
        t = source.trigger
        kv = await self.js.key_value(t.watch_bucket)
        watcher = await kv.watch(t.watch_pattern)
        self._closers.append(watcher.stop)
        async for entry in watcher:
            if entry is None or entry.operation is not None and entry.operation != "PUT":
                continue
            try:
                await self._on_kv(source, entry)
            except Exception:  # noqa: BLE001 - one bad entry must not stop the watch
                log.exception("kv entry %s not handled", entry.key)

    # ---- inputs ---------------------------------------------------------------------

    async def _on_kv(self, source: _Source, entry: Any) -> None:
        t = source.trigger
        value = _decode(entry.value or b"", t.value_type)
        inp = Input(
            id=f"kv.{t.watch_bucket}.{entry.revision}", kind="trigger", key=entry.key, mode=TriggerMode.STATE,
            info=entry.key, source=f"kv:{t.watch_bucket}", position=entry.revision, rules=source.rules,
            message=value, kv_key=entry.key, kv_revision=entry.revision,
        )  # fmt: skip
        await self.handle(source.wf, execution_id(source.wf.id, entry.key), inp)

    async def _on_message(self, source: _Source, msg: Any, durable: bool) -> None:
        t = source.trigger
        try:
            message = _decode(msg.data or b"", t.message_type)
            key = t.state_key(message) if t.state_key is not None else ""
        except Exception as err:  # noqa: BLE001 - not the rules' message type, or key_fn raised
            # Taken and dropped (a JetStream copy is acknowledged): redelivering it would fail the same way.
            log.warning("%s: message on %s dropped: %s: %s", source.wf.id, msg.subject, type(err).__name__, err)
            return
        position = msg.metadata.sequence.stream if durable else 0
        if not key:
            key = f"{t.stream}-{position}" if durable else f"msg-{secrets.token_hex(8)}"  # one execution per message
        mode = TriggerMode.MESSAGE_AND_STATE if t.state_key is not None else TriggerMode.MESSAGE
        inp = Input(
            id=f"js.{t.stream}.{position}" if durable else "", kind="trigger", key=key, mode=mode, info=msg.subject,
            source=f"js:{t.stream}" if durable else "", position=position, rules=source.rules, message=message,
            subject=msg.subject,
        )  # fmt: skip
        await self.handle(source.wf, execution_id(source.wf.id, key), inp)

    async def _on_inbox(self, msg: Any) -> None:
        exec_id = msg.subject.split(".", 2)[2]
        try:
            check_identifier("execution id", exec_id)
            body = msgspec.json.decode(msg.data or b"{}")
        except (ValueError, msgspec.DecodeError) as err:
            log.warning("%s: not a callback, dropped: %s", msg.subject, err)
            return
        if not isinstance(body, dict):
            return
        ex, _ = await self._load(exec_id)
        wf = self.registry.get(ex.workflow_id)
        if wf is None:
            return
        if body.get("kind") == "timeout":
            await self.handle(wf, exec_id, Input(id="timeout", kind="timeout", info="timeout"))
            return
        task_id = str(body.get("task_id", ""))
        rule = next((r for r in wf.rules if ex.pending and r.id == ex.pending.rule_id), None)
        result_type = self.registry.result_type(rule.action.result_type) if rule and rule.action else None
        try:
            result = msgspec.convert(body, result_type, strict=False) if result_type else body
        except msgspec.ValidationError as err:  # the execution keeps waiting for an answer it can read
            log.warning("%s: callback %s is not a %s, dropped: %s", exec_id, task_id, result_type, err)
            self.metrics.callbacks_received.add(1, {"workflow_id": wf.id, "status": "ignored"})
            return
        inp = Input(id=f"cb.{task_id}", kind="callback", task_id=task_id, result=result, info=msg.subject)
        await self.handle(wf, exec_id, inp)

    # ---- one input, one record --------------------------------------------------------

    async def handle(self, wf: ReactiveWorkflow, exec_id: str, inp: Input) -> list[ReactiveEvent]:
        lock = self._locks.setdefault(exec_id, asyncio.Lock())
        async with lock:
            for _ in range(3):
                ex, last_seq = await self._load(exec_id)
                if not inp.id:
                    inp.id = f"m{last_seq}"
                events = decide(wf, ex, inp, self.clock(), observe=self._evaluated(wf))
                if inp.kind == "callback":
                    status = "applied" if any(isinstance(e, CallbackApplied) for e in events) else "ignored"
                    self.metrics.callbacks_received.add(1, {"workflow_id": wf.id, "status": status})
                if not events:
                    return []
                if not ex.created:  # indexed before its first record: `recover` finds it whatever happens next
                    await self._index(Execution(exec_id, workflow_id=wf.id, key=inp.key))
                try:
                    seq = await append_record(self.js, exec_id, events, last_seq, f"{exec_id}:{inp.id}")
                except WrongLastSequence:
                    self._cache.pop(exec_id, None)  # someone else wrote: refold and decide again
                    continue
                for event in events:
                    ex = fold(ex, event)
                self._cache[exec_id] = (ex, seq)
                await self._effects(wf, ex, events)
                return events
        return []

    async def _load(self, exec_id: str) -> tuple[Execution, int]:
        cached = self._cache.get(exec_id)
        if cached is not None:
            return cached
        ex, seq, _ = await load_execution(self.js, exec_id)
        self._cache[exec_id] = (ex, seq)
        return ex, seq

    async def _effects(self, wf: ReactiveWorkflow, ex: Execution, events: list[ReactiveEvent]) -> None:
        await self._publish(events)
        for event in events:
            self._count(wf, event)
            if isinstance(event, ExecutionCreated) and event.deadline:
                await self.arm_timeout(ex.execution_id, event.deadline)
        await self._settle(wf, ex)
        if ex.is_terminal:
            self._locks.pop(ex.execution_id, None)

    async def _settle(self, wf: ReactiveWorkflow, ex: Execution) -> None:
        """The last effects of a record: the state in the state bucket, the timeout purged
        once ended, then the index entry (last: an entry that matches the history says
        every effect of its last record was performed)."""
        kv = await self.js.key_value(wf.state_bucket)
        await kv.put(ex.key, _JSON.encode(ex.state))
        if ex.is_terminal and ex.state.get("deadline"):
            await cancel_schedule(self.js, REACTIVE_STREAM, _schedule(ex.execution_id))
        await self._index(ex)

    async def _index(self, ex: Execution) -> None:
        index = await self.js.key_value(EXECUTIONS_BUCKET)
        await index.put(ex.execution_id, _JSON.encode(execution_summary(ex)))

    async def _publish(self, events: list[ReactiveEvent]) -> None:
        for event in events:
            for out in event.outgoing:
                await self.nc.publish(out.subject, _JSON.encode(out.data), headers={MSG_ID: out.msg_id})
        await self.nc.flush()

    async def arm_timeout(self, exec_id: str, deadline: str) -> None:
        """The execution's deadline as a durable timer (a message schedule, as for DAG runs'
        timers) firing into its inbox; arming it again replaces it."""
        body = _JSON.encode({"kind": "timeout", "execution_id": exec_id})
        await arm_schedule(self.js, REACTIVE_STREAM, _schedule(exec_id), callback_subject(exec_id), deadline, body)

    async def recover(self) -> None:
        """After a restart: publish the last record of each open execution again (at least
        once) and re-arm its timeout; an ended execution whose index entry does not match
        its history (killed before its effects were done) gets its last record published
        and its state and entry written. An entry without a history (killed before the
        first record) is dropped. Executions whose entry says ended cost no read."""
        for exec_id, stored in await kv_entries(self.js, EXECUTIONS_BUCKET, ">"):
            if is_terminal_status(_entry_status(stored)):
                continue  # an entry is written last: one that says ended was settled (no history read)
            ex, seq, last = await load_execution(self.js, exec_id)
            if not ex.created:
                await (await self.js.key_value(EXECUTIONS_BUCKET)).delete(exec_id)
                continue
            settled = _JSON.encode(execution_summary(ex)) == stored
            if ex.is_terminal and settled:
                continue
            self._cache[exec_id] = (ex, seq)
            await self._publish(last)
            if not ex.is_terminal and (deadline := str(ex.state.get("deadline") or "")):
                await self.arm_timeout(exec_id, deadline)
            if not settled and (wf := self.registry.get(ex.workflow_id)) is not None:
                await self._settle(wf, ex)

    # ---- metrics --------------------------------------------------------------------

    def _evaluated(self, wf: ReactiveWorkflow) -> Callable[[str, bool], None]:
        def count(rule_id: str, fired: bool) -> None:
            attrs = {"workflow_id": wf.id, "rule_id": rule_id, "fired": fired}
            self.metrics.rule_evaluations.add(1, attrs)

        return count

    def _count(self, wf: ReactiveWorkflow, event: ReactiveEvent) -> None:
        attrs = {"workflow_id": wf.id}
        if isinstance(event, ExecutionCreated):
            self.metrics.executions_created.add(1, attrs)
        elif isinstance(event, RuleFired):
            self.metrics.rule_firings.add(1, {**attrs, "rule_id": event.rule_id})
            self.metrics.action_dispatches.add(1, {**attrs, "rule_id": event.rule_id, "action": event.action})
            if event.task_id:
                self.metrics.pending_callbacks.add(1, attrs)
        elif isinstance(event, CallbackApplied):
            self.metrics.pending_callbacks.add(-1, attrs)
            self.metrics.callback_latency.record(event.latency_ms / 1000, {**attrs, "rule_id": event.rule_id})
        elif isinstance(event, ExecutionEnded):
            self.metrics.ended(wf.id, event.status, _duration(event.state or {}))


def _entry_status(stored: bytes) -> str:
    try:
        entry = msgspec.json.decode(stored)
    except msgspec.DecodeError:
        return ""
    return str(entry.get("status", "")) if isinstance(entry, dict) else ""


def _duration(state: dict[str, Any]) -> float | None:
    created, ended = state.get("created_at"), state.get("completed_at")
    if not created or not ended:
        return None
    return (parse_timestamp(ended) - parse_timestamp(created)).total_seconds()


def _schedule(exec_id: str) -> str:
    """Where an execution's timeout waits: ADR-51 fires a schedule only into its own stream,
    so beside the inbox it fires into (the engine's inbox stream is the DAG runs')."""
    return f"reactive.schedule.{check_identifier('execution id', exec_id)}"


def _decode(data: bytes, message_type: Any) -> Any:
    value = msgspec.json.decode(data) if data else None
    if message_type is None or value is None:
        return value
    return msgspec.convert(value, message_type, strict=False)
