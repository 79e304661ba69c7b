"""One trace per run: the engine's spans projected from the history, the workers'
spans children of their step attempts, the API's under the run."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dagnats.domain.trace_spans import ATTEMPT, span_id
from dagnats.infra import metrics, tracing
from dagnats.infra.engine.trace_projector import TraceProjector
from dagnats.infra.span_export import SpanSink
from dagnats.infra.worker import Worker

from harness import CHAIN3, EngineHarness
from otlp_receiver import process_tracer_provider

JOIN = {
    "name": "join3",
    "steps": [
        {"id": "a", "task": "ta"},
        {"id": "b", "task": "tb"},
        {"id": "c", "task": "tc", "depends_on": ["a", "b"], "retry": {"max_attempts": 2, "initial_delay": "10ms"}},
    ],
}


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    process_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _run_traced(nats_url, run, spans, definition, tasks, input_=None):
    w = Worker(nats_url, worker_id="traced")
    for task, handler in tasks.items():
        w.task(task)(handler)
    sink = SpanSink(spans, Resource.create({"service.name": "dagnats-engine"}))

    async def body():
        async with EngineHarness(nats_url) as h:
            projector = TraceProjector(h.nc.jetstream(), sink.export, metrics.setup_metrics("test").observe)
            await projector.start()
            await w.start()
            try:
                await h.client.register(definition)
                run_id = await h.client.start(definition["name"], input_)
                final = await h.wait_status(run_id, {"completed", "failed"})
                for _ in range(100):  # the run span is exported once the terminal record is projected
                    if any(s.name == f"run {definition['name']}" for s in spans.get_finished_spans()):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await w.stop()
                await projector.stop()
            return final

    final = run(body())
    trace_id = int(final["trace_id"], 16)
    return final, [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]


def test_a_run_is_one_trace_from_the_api_through_the_engine_to_the_workers(nats_url, run, spans):
    tasks = {t: (lambda ctx, data=None, _t=t: f"{_t} done") for t in ("ta", "tb", "tc")}
    final, in_run = _run_traced(nats_url, run, spans, CHAIN3, tasks, "x")
    by_name: dict[str, list] = {}
    for s in in_run:
        by_name.setdefault(s.name, []).append(s)
    (run_span,) = by_name["run chain3"]
    assert run_span.parent is None  # the run started its own trace: the run span is its root
    assert by_name["dagnats.api startRun"][0].parent.span_id == run_span.context.span_id
    for step, task in (("a", "ta"), ("b", "tb"), ("c", "tc")):
        (attempt,) = by_name[f"step {step}"]
        assert attempt.parent.span_id == run_span.context.span_id  # flat: no staircase
        assert attempt.context.span_id == int(span_id(final["run_id"], ATTEMPT, step, 1), 16)
        (execution,) = by_name[f"executeTask {task}"]
        assert execution.parent.span_id == attempt.context.span_id
        assert execution.attributes["messaging.system"] == "nats"
        assert execution.attributes["dagnats.delivery_count"] == 1
        assert execution.attributes["dagnats.worker_id"] == "traced"
        assert execution.attributes["dagnats.outcome"] == "step.completed"
    ids = {s.context.span_id for s in in_run}
    assert len(ids) == len(in_run)  # no duplicate
    assert all(s.parent is None or s.parent.span_id in ids for s in in_run)  # no orphan
    assert all(final["run_id"] not in s.name for s in in_run)  # span names never carry run ids


def test_a_join_links_its_dependencies_and_a_retry_is_a_second_attempt(nats_url, run, spans):
    failures = []

    def flaky(ctx, data=None):
        if not failures:
            failures.append(1)
            raise RuntimeError("first try fails")
        return "c done"

    tasks = {"ta": lambda ctx, data=None: 1, "tb": lambda ctx, data=None: 2, "tc": flaky}
    final, in_run = _run_traced(nats_url, run, spans, JOIN, tasks)
    assert final["status"] == "completed"
    attempts = sorted((s for s in in_run if s.name == "step c"), key=lambda s: s.attributes["dagnats.attempt"])
    assert [s.status.status_code.name for s in attempts] == ["ERROR", "OK"]
    assert any(e.name == "exception" for e in attempts[0].events)
    step_ids = {s.name: s.context.span_id for s in in_run if s.name in ("step a", "step b")}
    for attempt in attempts:
        assert {link.context.span_id for link in attempt.links} == set(step_ids.values())
        assert attempt.attributes["dagnats.queue_ms"] >= 0
    queues = [s for s in in_run if s.name == "queued"]
    assert len(queues) == 4  # a, b, c twice
    failed_delivery = [s for s in in_run if s.name == "executeTask tc" and s.status.status_code.name == "ERROR"]
    assert len(failed_delivery) == 1 and any(e.name == "exception" for e in failed_delivery[0].events)
    assert 'dagnats_step_retries_total{workflow="join3",step="c"} 1' in metrics.prometheus_text()


def test_metrics_count_runs_and_time_steps_in_prometheus_text(nats_url, run, spans):
    tasks = {t: (lambda ctx, data=None, _t=t: f"{_t} done") for t in ("ta", "tb", "tc")}
    _run_traced(nats_url, run, spans, CHAIN3, tasks, "x")
    text = metrics.prometheus_text()
    assert 'dagnats_runs_started_total{workflow="chain3"}' in text
    assert 'dagnats_runs_completed_total{workflow="chain3"}' in text
    assert "# TYPE dagnats_step_latency_milliseconds histogram" in text
    assert 'dagnats_step_queue_latency_milliseconds_count{workflow="chain3",step="a"}' in text


def test_a_malformed_traceparent_starts_a_new_trace_and_the_run_completes(nats_url, run, caplog):
    w = Worker(nats_url, worker_id="traced")
    for task in ("ta", "tb", "tc"):
        w.task(task)(lambda ctx, data=None: "ok")

    async def body():
        async with EngineHarness(nats_url) as h:
            await w.start()
            try:
                await h.client.register(CHAIN3)
                run_id = await h.client.start("chain3", "x", trace_parent="00-not-a-trace-01")
                return await h.wait_status(run_id, "completed")
            finally:
                await w.stop()

    final = run(body())
    assert len(final["trace_id"]) == 32 and tracing.valid_trace_parent(final["trace_parent"])
    assert sum("malformed traceparent" in r.getMessage() for r in caplog.records) == 1


def test_the_start_span_continues_the_callers_trace_with_its_tracestate(nats_url, run, spans):
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    state = "vendor=opaque,other=1"

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            return await h.client.start("chain3", "x", trace_parent=caller, trace_state=state)

    run_id = run(body())
    (start,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "dagnats.api startRun" and s.attributes.get("dagnats.run_id") == run_id
    ]
    assert start.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert start.parent.span_id == int("b7ad6b7169203331", 16)
    assert dict(start.context.trace_state) == {"vendor": "opaque", "other": "1"}
