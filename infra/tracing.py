"""W3C trace context and OpenTelemetry set-up.

Every run has one trace: the API starts it (or continues the caller's) and
its ``traceparent`` travels in each event's ``trace_parent`` field and in
NATS headers, API -> engine -> worker -> engine, so it survives restarts.
Spans are exported over OTLP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set; otherwise tracing costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_configured = False


def new_trace_parent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def valid_trace_parent(value: object) -> bool:
    """A malformed or all-zero traceparent starts a new trace instead of failing the run."""
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value):
        return False
    _, trace, span, _ = value.split("-")
    return trace != "0" * 32 and span != "0" * 16


def setup_tracing(service_name: str) -> bool:
    """Install an OTLP span exporter if an endpoint is configured; True if so."""
    global _configured
    if _configured or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return _configured
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    return True


def use_provider(provider) -> None:
    """Record spans with ``provider`` (an exporter of one's own, e.g. in tests)."""
    global _configured
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    _configured = True


@contextlib.contextmanager
def engine_span(run_id: str, events: list) -> Iterator[str]:
    """A span for one decision record, child of the run's trace; yields its
    traceparent, or "" when tracing is off (no span is recorded then)."""
    if not _configured or not events:
        yield ""
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract({"traceparent": events[0].trace_parent}) if events[0].trace_parent else None
    attributes = {
        "dagnats.run_id": run_id,
        "dagnats.event_types": ",".join(e.type for e in events),
        "dagnats.step_ids": ",".join(sorted({e.step_id for e in events if e.step_id})),
    }
    tracer = trace.get_tracer("dagnats.engine")
    with tracer.start_as_current_span(
        "dagnats.engine record", context=parent, kind=trace.SpanKind.INTERNAL, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        yield carrier.get("traceparent", "")


@contextlib.contextmanager
def api_span(operation: str, trace_parent: str | None) -> Iterator[str]:
    """A span for a control-plane operation; yields the traceparent the run carries."""
    if not _configured:
        yield trace_parent if trace_parent and valid_trace_parent(trace_parent) else new_trace_parent()
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract({"traceparent": trace_parent}) if valid_trace_parent(trace_parent) else None
    tracer = trace.get_tracer("dagnats.api")
    with tracer.start_as_current_span(f"dagnats.api {operation}", context=parent, kind=trace.SpanKind.SERVER) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        yield carrier.get("traceparent") or new_trace_parent()
