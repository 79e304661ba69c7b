"""Projected spans (``domain.trace_spans.Span``) as OpenTelemetry spans, exported.

The ids are the projection's own (deterministic), so the same history
exported twice yields the same spans: a backend keeps one of each.
"""

from __future__ import annotations

import logging
from typing import Any

from dagnats.domain.events import parse_timestamp
from dagnats.domain.trace_spans import ERROR, OK, RUN, Span

log = logging.getLogger("dagnats.tracing")

SCOPE = "dagnats.engine"


def _ns(stamp: str) -> int:
    return int(parse_timestamp(stamp).timestamp() * 1_000_000_000)


def readable(span: Span, resource: Any) -> Any:
    """One projected span as an SDK ``ReadableSpan`` with the projection's ids."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    state = trace.TraceState.from_header([span.trace_state]) if span.trace_state else None

    def context(span_id: str, trace_id: str = span.trace_id, remote: bool = False) -> trace.SpanContext:
        in_run = trace_id == span.trace_id
        return trace.SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=remote,
            trace_flags=flags,
            trace_state=state if in_run else None,
        )

    if span.status == ERROR:
        status = trace.Status(trace.StatusCode.ERROR, span.error or None)
    elif span.status == OK:
        status = trace.Status(trace.StatusCode.OK)
    else:
        status = trace.Status(trace.StatusCode.UNSET)
    return ReadableSpan(
        name=span.name,
        context=context(span.span_id),
        parent=context(span.parent_id, remote=span.kind == RUN) if span.parent_id else None,
        resource=resource,
        attributes=dict(span.attributes),
        events=[Event(e.name, dict(e.attributes), _ns(e.at)) for e in span.events if e.at],
        links=[trace.Link(context(link.span_id, link.trace_id), dict(link.attributes)) for link in span.links],
        kind=trace.SpanKind.INTERNAL,
        status=status,
        start_time=_ns(span.start),
        end_time=_ns(span.end or span.start),
        instrumentation_scope=InstrumentationScope(SCOPE),
    )


class SpanSink:
    """Exports projected spans with one exporter; ``export`` is blocking (call it in a thread)."""

    def __init__(self, exporter: Any, resource: Any) -> None:
        self.exporter, self.resource = exporter, resource

    def export(self, spans: list[Span]) -> bool:
        if not spans:
            return True
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            converted = [readable(s, self.resource) for s in spans if s.start]
            return self.exporter.export(converted) == SpanExportResult.SUCCESS
        except Exception as err:  # noqa: BLE001 - an export failure never affects a run
            log.warning("span export failed: %s", err)
            return False

    def shutdown(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception as err:  # noqa: BLE001
            log.debug("span exporter shutdown: %s", err)
