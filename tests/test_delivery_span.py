"""A worker's delivery span costs nothing when nothing records spans, and keeps the baggage."""

from __future__ import annotations

from opentelemetry import baggage, trace

from dagnats.domain.events import TaskPayload
from dagnats.infra.context import TaskContext
from dagnats.infra.delivery_span import delivery_span

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _context(**fields) -> TaskContext:
    return TaskContext(run_id="r", step_id="s", attempt=1, task="t", worker_id="w", trace_parent=PARENT, **fields)


def test_without_a_tracer_provider_the_span_is_the_invalid_one_and_nothing_is_attached(monkeypatch):
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    with delivery_span(_context(), TaskPayload(task_id="x", run_id="r", step_id="s", task="t"), "task.t", 1) as span:
        assert span is trace.INVALID_SPAN
        assert trace.get_current_span() is trace.INVALID_SPAN


def test_baggage_reaches_the_handler_even_without_a_tracer_provider(monkeypatch):
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    ctx = _context(baggage={"tenant": "acme"})
    with delivery_span(ctx, TaskPayload(task_id="x", run_id="r", step_id="s", task="t"), "task.t", 1):
        assert baggage.get_all() == {"tenant": "acme"}
    assert baggage.get_all() == {}
