"""A worker's span for one delivery of a task: a child of its step-attempt span.

The engine's spans are projected from the history (``domain/trace_spans.py``);
the attempt span's id derives from (run, step, attempt, instance), so the
worker names its parent without asking anyone. A redelivered task (a worker
killed mid-task, an ack that timed out) gets a second span under the same
attempt, told apart by ``messaging.nats.delivery_count``. Attributes follow
the OpenTelemetry messaging semantic conventions.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from dagnats.domain.events import TaskPayload

from .context import TaskContext

_tracer = trace.get_tracer("dagnats.worker")
_HOST = socket.gethostname()


@contextlib.contextmanager
def delivery_span(ctx: TaskContext, payload: TaskPayload, subject: str, delivered: int) -> Iterator[Any]:
    if (
        not ctx.baggage
        and isinstance(_tracer, trace.ProxyTracer)
        and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    ):
        # Nothing records spans in this process (no provider was ever set), and there is no
        # baggage to hand the handler: the no-op span would cost a tenth of a task's CPU.
        yield trace.INVALID_SPAN
        return
    # The task's traceparent names its step-attempt span (``attempt_trace_parent``); the
    # run's tracestate and baggage come along, so the handler runs with the baggage.
    parent = propagate.extract(_carrier(ctx)) if ctx.trace_parent or ctx.baggage else None
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "fetch",
        "messaging.destination.name": subject,
        "messaging.message.id": payload.task_id,
        "messaging.nats.delivery_count": delivered,
        "dagnats.run_id": ctx.run_id,
        "dagnats.step_id": ctx.step_id,
        "dagnats.attempt": ctx.attempt,
        "dagnats.delivery_count": delivered,
        "dagnats.task": ctx.task,
        "dagnats.workflow": ctx.workflow_name,
        "dagnats.worker_id": ctx.worker_id,
        "host.name": _HOST,
    }
    if ctx.instance is not None:
        attributes["dagnats.instance"] = ctx.instance
    # The span is made current in the context it was extracted into (with the baggage).
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with _tracer.start_as_current_span(
            f"executeTask {ctx.task}",
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span
    finally:
        if token is not None:
            otel_context.detach(token)


def _carrier(ctx: TaskContext) -> dict[str, str]:
    carrier = {"traceparent": ctx.trace_parent} if ctx.trace_parent else {}
    if ctx.trace_parent and ctx.trace_state:
        carrier["tracestate"] = ctx.trace_state
    if ctx.baggage:
        carrier["baggage"] = ",".join(f"{k}={quote(v, safe='')}" for k, v in ctx.baggage.items())
    return carrier


def record_outcome(span: Any, outcome_type: str, failed: bool, payload: Any) -> None:
    span.set_attribute("dagnats.outcome", outcome_type)
    if failed:
        error = str(payload.get("error", "")) if isinstance(payload, dict) else str(payload)
        kind = str(payload.get("failure_type", "")) if isinstance(payload, dict) else ""
        span.add_event("exception", {"exception.type": kind or "failure", "exception.message": error})
        span.set_attribute("dagnats.failure_type", kind)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
