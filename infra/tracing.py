"""W3C trace context and OpenTelemetry set-up.

Every run has one trace: the API starts it (or continues the caller's) and
its ``traceparent`` travels in each event's ``trace_parent`` field and in
NATS headers, API -> engine -> worker -> engine, so it survives restarts.
Spans are exported over OTLP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set; otherwise tracing costs nothing.
"""

from __future__ import annotations

import os
import re
import secrets

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
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True
    return True
