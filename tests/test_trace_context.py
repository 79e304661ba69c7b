"""W3C tracestate and baggage from a run's start to its worker and its spans, and a
repeated start linked to the run it was answered with: checked with the OTLP receiver."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry import baggage
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from dagnats.domain import events as ev
from dagnats.domain.definition import SubWorkflowConfig
from dagnats.domain.kinds.children import start_child
from dagnats.domain.state import WorkflowRun
from dagnats.domain.trace_context import baggage_items, parse_baggage, parse_trace_state
from dagnats.domain.trace_spans import project
from dagnats.infra import metrics
from dagnats.infra.engine.trace_projector import TraceProjector
from dagnats.infra.logs import RunContextFilter
from dagnats.infra.span_export import SpanSink
from dagnats.infra.worker import Worker

from harness import EngineHarness
from otlp_receiver import OtlpReceiver, process_tracer_provider

HISTORIES = Path(__file__).parent / "histories"
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
AGAIN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ONE = {"name": "ctx-one", "steps": [{"id": "only", "task": "ctx-task"}]}


class _WhileOpen(SimpleSpanProcessor):
    """Exports the worker's spans to the receiver while this module runs (a provider
    keeps its processors for good: a closed receiver would stall every later span)."""

    open = True

    def on_end(self, span) -> None:
        if self.open:
            super().on_end(span)


@pytest.fixture(scope="module")
def otlp():
    with OtlpReceiver() as receiver:
        processor = _WhileOpen(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
        process_tracer_provider().add_span_processor(processor)
        try:
            yield receiver
        finally:
            processor.open = False


def _session(nats_url: str, otlp: OtlpReceiver, handler: Any, body: Any) -> Any:
    """Run ``body(h)`` with an engine, a projector exporting to ``otlp`` and a worker."""
    w = Worker(nats_url, worker_id="ctx-worker")
    w.task("ctx-task")(handler)
    exporter = OTLPSpanExporter(endpoint=f"{otlp.endpoint}/v1/traces")
    sink = SpanSink(exporter, Resource.create({"service.name": "dagnats-engine"}))

    async def session() -> Any:
        async with EngineHarness(nats_url) as h:
            projector = TraceProjector(h.nc.jetstream(), sink.export, metrics.setup_metrics("test").observe)
            await projector.start()
            await w.start()
            try:
                await h.client.register(ONE)
                return await body(h)
            finally:
                await w.stop()
                await projector.stop()

    return session


async def _until(check: Any, what: str, tries: int = 200) -> Any:
    for _ in range(tries):
        found = check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {what}")


def test_tracestate_and_baggage_reach_the_worker_its_span_and_the_run_spans(nats_url, run, otlp):
    seen: dict[str, Any] = {}

    def handler(ctx, data=None):
        seen.update(baggage=dict(ctx.baggage), state=ctx.trace_state, otel=dict(baggage.get_all()))
        return "ok"

    async def body(h: EngineHarness) -> dict[str, Any]:
        run_id = await h.client.start(
            "ctx-one",
            trace_parent=CALLER,
            trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            baggage="tenant=acme, user=ann%20lee;private",
        )
        final = await h.wait_status(run_id, "completed")
        await _until(lambda: [s for s in otlp.trace(CALLER.split("-")[1]) if s.name == "run ctx-one"], "run span")
        await _until(lambda: [s for s in otlp.trace(CALLER.split("-")[1]) if s.name.startswith("executeTask")], "x")
        return final

    final = run(_session(nats_url, otlp, handler, body)())
    assert final["trace_id"] == CALLER.split("-")[1]
    assert seen["baggage"] == seen["otel"] == {"tenant": "acme", "user": "ann lee"}
    assert seen["state"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    spans = otlp.trace(CALLER.split("-")[1])
    engine = [s for s in spans if s.service == "dagnats-engine"]
    assert {s.name for s in engine} >= {"run ctx-one", "step only", "queued"}
    assert all(s.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" for s in engine)
    (delivery,) = [s for s in spans if s.name == "executeTask ctx-task"]
    assert delivery.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_a_malformed_tracestate_or_baggage_is_dropped_with_one_line_and_the_run_completes(nats_url, run, otlp, caplog):
    seen: dict[str, Any] = {}

    def handler(ctx, data=None):
        seen.update(baggage=dict(ctx.baggage), state=ctx.trace_state)
        return "ok"

    async def body(h: EngineHarness) -> dict[str, Any]:
        run_id = await h.client.start("ctx-one", trace_parent=CALLER, trace_state="Bad Key=1", baggage="no equals")
        return await h.wait_status(run_id, "completed")

    caplog.handler.addFilter(RunContextFilter())
    with caplog.at_level(logging.WARNING, logger="dagnats.tracing"):
        final = run(_session(nats_url, otlp, handler, body)())
    assert final["status"] == "completed" and final["trace_id"] == CALLER.split("-")[1]
    assert seen == {"baggage": {}, "state": ""}
    dropped = [r for r in caplog.records if "malformed tracestate" in r.getMessage()]
    assert len(dropped) == 1
    assert sum("malformed baggage" in r.getMessage() for r in caplog.records) == 1
    # Logged by the control plane, outside any actor, and still about the run.
    assert (dropped[0].run_id, dropped[0].trace_id) == (final["run_id"], final["trace_id"])


def test_a_repeated_start_links_the_callers_span_to_the_existing_run(nats_url, run, otlp):
    async def body(h: EngineHarness) -> tuple[str, str, dict[str, Any]]:
        first = await h.client.start("ctx-one", "in", idempotency_key="order-7")
        final = await h.wait_status(first, "completed")
        again = await h.client.start("ctx-one", "in", idempotency_key="order-7", trace_parent=AGAIN)
        named = await h.client.start("ctx-one", "in", run_id=first, trace_parent=CALLER)
        trace_id = final["trace_id"]

        def repeats() -> list[Any]:
            found = [s for s in otlp.trace(trace_id) if s.name == "start again"]
            return found if len(found) == 2 else []

        await _until(repeats, "both repeated starts")
        assert again == named == first
        return first, trace_id, await h.client.status(first)

    run_id, trace_id, status = run(_session(nats_url, otlp, lambda ctx, data=None: "ok", body)())
    assert status["status"] == "completed"  # the link changes nothing about the run
    spans = {s.span_id: s for s in otlp.trace(trace_id)}
    (run_span,) = [s for s in spans.values() if s.name == "run ctx-one"]
    repeats = [s for s in spans.values() if s.name == "start again"]
    assert all(s.parent_id == run_span.span_id for s in repeats)
    assert sorted(link for s in repeats for link in s.links) == sorted([AGAIN.split("-")[2], CALLER.split("-")[2]])
    assert all(s.attributes["dagnats.deduplicated"] for s in repeats)
    assert len([s for s in otlp.spans if s.name == "run ctx-one" and s.trace_id == AGAIN.split("-")[1]]) == 0


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", ""),
        ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
        (" rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("tenant@vendor=x", "tenant@vendor=x"),
        ("Bad Key=1", None),
        ("a=1,a=2", None),
        ("a=x=y", None),
        (",".join(f"k{i}=v" for i in range(33)), None),
    ],
)
def test_a_tracestate_is_kept_when_valid_and_dropped_when_not(value, parsed):
    assert parse_trace_state(value) == parsed


def test_baggage_is_parsed_decoded_and_bounded():
    assert parse_baggage("tenant=acme, user=ann%20lee;private") == "tenant=acme,user=ann%20lee;private"
    assert baggage_items("tenant=acme,user=ann%20lee;private") == {"tenant": "acme", "user": "ann lee"}
    assert parse_baggage("no equals") is None
    assert parse_baggage("k=" + "v" * 9000) is None


def test_the_projection_carries_the_tracestate_and_links_each_repeated_start_once():
    history = msgspec.json.decode((HISTORIES / "traced-repeated-start.history.json").read_bytes(), type=list[ev.Event])
    trace = project([(seq, [event]) for seq, event in enumerate(history, 1)], history[0].run_id)
    spans = trace.spans()
    assert {s.trace_state for s in spans} == {"congo=t61rcWkgMzE"}
    (run_span,) = [s for s in spans if s.kind == "run"]
    repeats = [s for s in spans if s.name == "start again"]
    assert [link.span_id for s in repeats for link in s.links] == ["00f067aa0ba902b7", "b7ad6b7169203331"]
    assert all(s.parent_id == run_span.span_id and s.end == s.start for s in repeats)
    # The run span links the caller that came while it was open; the later one has its own span only.
    assert [link.span_id for link in run_span.links] == ["00f067aa0ba902b7"]


@pytest.mark.parametrize("detach", [False, True])
def test_a_child_run_carries_on_its_parents_tracestate_and_baggage(detach):
    parent = WorkflowRun(run_id="p1", trace_state="congo=t61rcWkgMzE", baggage="tenant=acme")
    action = start_child(parent, "c1", SubWorkflowConfig(workflow="child", detach=detach), None, "s", 1)
    assert (action.trace_state, action.baggage) == ("congo=t61rcWkgMzE", "tenant=acme")
