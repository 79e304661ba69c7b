"""Exports the engine's spans from the recorded history, with a durable cursor.

Every engine pulls from one durable consumer, ``trace-projector``, on
``history.>`` (explicit acks): JetStream hands each record to one engine and
keeps the cursor, so a record is acked only after the spans it finished were
exported, and a ``kill -9`` at any moment loses none (unacked records come
back). Why one shared consumer and not one per partition: history subjects
are not partitioned, and a shared cursor needs no hand-over when a partition
changes owner.

Any engine may get any record of a run, in any interleaving. A record's
``Nats-Expected-Last-Subject-Sequence`` header names the run's previous
record: if the cached projection of the run ended there, the record is
folded onto it; otherwise the run's history up to the record is read again
and folded from the start. Projection is deterministic (span ids derive from
run, step, attempt), so a record exported twice (a crash between export and
ack, two engines) yields the same spans, which a backend keeps once.
Replaying a run's actor exports nothing: the actor never exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.domain.events import Event, decode_record
from dagnats.domain.trace_spans import RunTrace, Span

from ..wire.headers import EXPECTED_LAST_SUBJECT_SEQ
from ..wire.names import HISTORY_STREAM
from ..wire.reading import let_go, more_pending, pulled, stored_batches, stored_messages
from ..wire.subjects import history_subject

log = logging.getLogger("dagnats.tracing")

CONSUMER = "trace-projector"
FETCH = 256
CACHE_RUNS = 4096
BACKOFF_MAX = 30.0


async def ensure_consumer(js: JetStreamContext) -> None:
    config = api.ConsumerConfig(
        durable_name=CONSUMER,
        filter_subject="history.>",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=10,  # a killed engine's records come back soon; exporting twice is harmless
        max_deliver=-1,
        max_ack_pending=20_000,
    )
    await js.add_consumer(HISTORY_STREAM, config)


class TraceProjector:
    """Follows ``history.>`` and hands finished spans to ``export`` (blocking, run in a
    thread; False = not exported, the records come back later). ``observe`` sees each
    record's finished spans once exported (metrics)."""

    def __init__(
        self,
        js: JetStreamContext,
        export: Callable[[list[Span]], bool],
        observe: Callable[[str, list[Event], list[Span]], None] | None = None,
    ) -> None:
        self.js, self.export, self.observe = js, export, observe
        self.cache: OrderedDict[str, RunTrace] = OrderedDict()
        self.exported = 0
        self._task: asyncio.Task | None = None
        self._sub: Any = None
        self._stopping = False

    async def start(self) -> None:
        await ensure_consumer(self.js)
        self._sub = await self.js.pull_subscribe_bind(CONSUMER, HISTORY_STREAM)
        self._task = asyncio.create_task(self._loop(), name="trace-projector")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
        if self._sub is not None:
            await let_go(self._sub, CONSUMER, log)

    async def _loop(self) -> None:
        batch, backoff = 1, 0.5
        while not self._stopping:
            msgs = await pulled(self._sub, batch, "trace projector fetch", log)
            if msgs is None:
                return
            if not msgs:
                continue
            batch = FETCH if more_pending(msgs) else 1
            if await self.handle(msgs):
                backoff = 0.5
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def handle(self, msgs: list[Msg]) -> bool:
        """Project a batch of records, export what they finished, then ack; True if exported."""
        spans: list[Span] = []
        finished: list[tuple[str, list[Event], list[Span]]] = []
        for msg in msgs:
            try:
                trace, events, done = await self._project(msg)
            except Exception as err:  # noqa: BLE001 - an unreadable record must not stall the rest
                log.warning("cannot project history record %s: %s", msg.subject, err)
                continue
            spans += done
            finished.append((trace.workflow, events, done))
        ok = await asyncio.to_thread(self.export, spans) if spans else True
        if not ok:
            await asyncio.gather(*(_settle(m.nak()) for m in msgs))
            return False
        self.exported += len(spans)
        if self.observe is not None:
            for workflow, events, done in finished:
                self.observe(workflow, events, done)
        await asyncio.gather(*(_settle(m.ack()) for m in msgs))
        return True

    async def _project(self, msg: Msg) -> tuple[RunTrace, list[Event], list[Span]]:
        run_id = msg.subject.split(".", 1)[1]
        seq = msg.metadata.sequence.stream
        previous = (msg.headers or {}).get(EXPECTED_LAST_SUBJECT_SEQ)
        trace = self.cache.pop(run_id, None)
        if trace is None or previous is None or trace.last_seq != int(previous):
            trace = await self._rebuild(run_id, seq, int(previous) if previous is not None else None)
        events = decode_record(msg.data or b"[]")
        done = trace.apply(events, seq)
        if not trace.ended:
            self.cache[run_id] = trace
            while len(self.cache) > CACHE_RUNS:
                self.cache.popitem(last=False)
        return trace, events, done

    async def _rebuild(self, run_id: str, seq: int, previous: int | None) -> RunTrace:
        """The run's trace folded from its history before ``seq``."""
        subject = history_subject(run_id)
        records = await _records_before(stored_batches(self.js, HISTORY_STREAM, subject), seq)
        if previous and (not records or records[-1][0] != previous):
            # A replica answered a moment behind: ask the stream's leader.
            records = await _records_before(stored_messages(self.js, HISTORY_STREAM, subject), seq)
        trace = RunTrace(run_id)
        for record_seq, data in records:
            trace.apply(decode_record(data), record_seq)
        trace.finished.clear()
        return trace


async def _records_before(messages: Any, seq: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    async with contextlib.aclosing(messages) as stored_records:
        async for stored in stored_records:
            if (stored.seq or 0) >= seq:
                break
            out.append((stored.seq or 0, stored.data or b"[]"))
    return out


def _discard(spans: list[Span]) -> bool:
    return True


async def _settle(coro: Any) -> None:
    try:
        await coro
    except Exception as err:  # noqa: BLE001 - JetStream redelivers what was not acked
        log.debug("ack failed: %s", err)


async def start_projector(js: JetStreamContext, service: str = "dagnats-engine") -> TraceProjector | None:
    """The engine's projector exporting spans and metrics as the OpenTelemetry environment
    says; None if neither is configured."""
    from .. import metrics, otel_config
    from ..span_export import SpanSink

    try:
        exporter = otel_config.span_exporter()
        if exporter is None and otel_config.exporter_name("METRICS") == "none":
            return None
        export = SpanSink(exporter, otel_config.resource(service)).export if exporter else _discard
        projector = TraceProjector(js, export, metrics.setup_metrics(service).observe)
        await projector.start()
    except Exception as err:  # noqa: BLE001 - tracing never stops the engine
        log.warning("trace projector not started: %s", err)
        return None
    return projector
