"""W3C trace context and OpenTelemetry set-up.

Every run has one trace. A run started with a ``traceparent`` (client,
``TRACEPARENT`` / ``--traceparent`` on the CLI, the HTTP API) continues the
caller's trace; one started without starts its own. The run's traceparent is
recorded on ``workflow.started`` and travels in each event's ``trace_parent``
field and in NATS headers, so it survives restarts.

The engine's spans (the run, each step attempt, queue times) are not recorded
live: they are projected from the history (``domain/trace_spans.py``,
``infra/engine/trace_projector.py``), so a crash loses none. Live spans are the
control plane's (``dagnats.api <op>``) and the workers' (one per delivery,
children of their step-attempt span). Nothing is exported unless the standard
OpenTelemetry environment asks for it (``infra/otel_config.py``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator

from dagnats.domain.trace_context import parse_baggage, parse_trace_parent, parse_trace_state
from dagnats.domain.trace_spans import run_trace_parent

from . import otel_config

log = logging.getLogger("dagnats.tracing")
_configured = False
_provider = None


def new_trace_parent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def valid_trace_parent(value: object) -> bool:
    """A malformed or all-zero traceparent starts a new trace instead of failing the run."""
    return parse_trace_parent(value) is not None


def setup_tracing(service_name: str) -> bool:
    """Install a span exporter if the environment configures one; True if so."""
    global _configured
    if _configured:
        return True
    try:
        exporter = otel_config.span_exporter()
        if exporter is None:
            return False
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=otel_config.resource(service_name))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    except Exception as err:  # noqa: BLE001 - tracing never stops a process from starting
        log.warning("tracing is off: %s", err)
        return False
    use_provider(provider)
    return True


def use_provider(provider) -> None:
    """Record spans with ``provider`` (an exporter of one's own, e.g. in tests)."""
    global _configured, _provider
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    _provider = provider
    _configured = True


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still buffered (a worker's last deliveries, on SIGTERM)."""
    if _provider is not None:
        with contextlib.suppress(Exception):
            _provider.force_flush(timeout_ms)


def incoming(trace_parent: str | None, what: str) -> str | None:
    """A caller's traceparent if valid; a malformed one is logged once and dropped."""
    if not trace_parent:
        return None
    if valid_trace_parent(trace_parent):
        return trace_parent
    log.warning("%s: ignoring malformed traceparent %r; the run starts a new trace", what, trace_parent[:80])
    return None


def incoming_state(trace_state: str | None, what: str) -> str:
    """A caller's tracestate if valid, else "" (a malformed one is logged once and dropped)."""
    return _incoming(trace_state, parse_trace_state, "tracestate", what)


def incoming_baggage(baggage: str | None, what: str) -> str:
    """A caller's baggage if valid, else "" (a malformed one is logged once and dropped)."""
    return _incoming(baggage, parse_baggage, "baggage", what)


def _incoming(value: str | None, parse: Callable[[str], str | None], name: str, what: str) -> str:
    if not value:
        return ""
    parsed = parse(value)
    if parsed is None:
        log.warning("%s: ignoring malformed %s %r", what, name, value[:80])
    return parsed or ""


@contextlib.contextmanager
def api_span(operation: str, trace_parent: str | None, run_id: str = "", trace_state: str = "") -> Iterator[str]:
    """A span for a control-plane operation; yields the traceparent the run records:
    the caller's, or (none or malformed) a new trace whose root is the run's own span.
    The caller's ``trace_state`` (already checked) goes along with its traceparent."""
    caller = incoming(trace_parent, operation)
    if caller:
        recorded = caller
    elif run_id:
        recorded = run_trace_parent(secrets.token_hex(16), run_id)
    else:
        recorded = new_trace_parent()
    if not _configured:
        yield recorded
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("dagnats.api")
    carrier = {"traceparent": recorded}
    if caller and trace_state:
        carrier["tracestate"] = trace_state
    parent = propagate.extract(carrier)
    attributes = {"dagnats.run_id": run_id} if run_id else {}
    with tracer.start_as_current_span(
        f"dagnats.api {operation}", context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    ):
        yield recorded
