"""One trace per run: API -> engine -> worker -> engine, in real spans."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dagnats.infra import tracing
from dagnats.infra.worker import Worker

from harness import CHAIN3, EngineHarness


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    return exporter


def test_a_run_is_one_trace_from_the_api_through_the_engine_to_the_workers(nats_url, run, spans):
    w = Worker(nats_url, worker_id="traced")
    for task in ("ta", "tb", "tc"):
        w.task(task)(lambda ctx, data=None, _t=task: f"{_t} done")

    async def body():
        async with EngineHarness(nats_url) as h:
            await w.start()
            try:
                await h.client.register(CHAIN3)
                run_id = await h.client.start("chain3", "x")
                final = await h.wait_status(run_id, "completed")
            finally:
                await w.stop()
            return final

    final = run(body())
    recorded = spans.get_finished_spans()
    trace_id = int(final["trace_id"], 16)
    in_run = [s for s in recorded if s.context.trace_id == trace_id]
    names = [s.name for s in in_run]
    assert "dagnats.api startRun" in names
    assert names.count("dagnats.engine record") >= 4
    executions = [s for s in in_run if s.name.startswith("executeTask")]
    assert sorted(s.name for s in executions) == ["executeTask ta", "executeTask tb", "executeTask tc"]
    engine_span_ids = {s.context.span_id for s in in_run if s.name == "dagnats.engine record"}
    assert all(s.parent.span_id in engine_span_ids for s in executions)
    assert all(final["run_id"] not in s.name for s in in_run)  # span names never carry run ids
