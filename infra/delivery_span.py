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

from opentelemetry import propagate, trace

from dagnats.domain.events import TaskPayload

from .context import TaskContext

_tracer = trace.get_tracer("dagnats.worker")
_HOST = socket.gethostname()


@contextlib.contextmanager
def delivery_span(ctx: TaskContext, payload: TaskPayload, subject: str, delivered: int) -> Iterator[Any]:
    # The task's traceparent names its step-attempt span (``attempt_trace_parent``).
    parent = propagate.extract({"traceparent": ctx.trace_parent}) if ctx.trace_parent else None
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
    with _tracer.start_as_current_span(
        f"executeTask {ctx.task}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


def record_outcome(span: Any, outcome_type: str, failed: bool, payload: Any) -> None:
    span.set_attribute("dagnats.outcome", outcome_type)
    if failed:
        error = str(payload.get("error", "")) if isinstance(payload, dict) else str(payload)
        kind = str(payload.get("failure_type", "")) if isinstance(payload, dict) else ""
        span.add_event("exception", {"exception.type": kind or "failure", "exception.message": error})
        span.set_attribute("dagnats.failure_type", kind)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
