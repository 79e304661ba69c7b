"""A real OTLP/HTTP receiver in the test process: decodes the protobuf exports.

with OtlpReceiver() as otlp:          # otlp.endpoint -> OTEL_EXPORTER_OTLP_ENDPOINT
    ...
    otlp.spans                         # list[ReceivedSpan], in arrival order
    otlp.metrics                       # {metric name: [data point dicts]}
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    status: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    trace_state: str = ""
    event_times: list[int] = field(default_factory=list)  # unix ns, beside ``events``


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.metrics: dict[str, list[dict[str, Any]]] = {}
        self.logs: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.receive(self.path, body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="otlp-receiver")

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def receive(self, path: str, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            if path.endswith("/v1/traces"):
                self._traces(body)
            elif path.endswith("/v1/metrics"):
                self._metrics(body)
            elif path.endswith("/v1/logs"):
                request = ExportLogsServiceRequest.FromString(body)
                for rl in request.resource_logs:
                    for sl in rl.scope_logs:
                        for rec in sl.log_records:
                            self.logs.append({"body": _value(rec.body), **_attributes(rec.attributes)})

    def _traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            service = _attributes(rs.resource.attributes).get("service.name", "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            status=s.status.code,
                            attributes=_attributes(s.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in s.events],
                            links=[link.span_id.hex() for link in s.links],
                            trace_state=s.trace_state,
                            event_times=[e.time_unix_nano for e in s.events],
                        )
                    )

    def _metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points
                    rows = self.metrics.setdefault(metric.name, [])
                    for p in points:
                        row: dict[str, Any] = {"attributes": _attributes(p.attributes)}
                        if kind == "histogram":
                            row.update(count=p.count, sum=p.sum)
                        else:
                            row["value"] = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                        rows.append(row)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def process_tracer_provider() -> Any:
    """The process's SDK tracer provider, installed here if no test module did yet (the
    global provider is set once for good: each module adds its own span processor)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from dagnats.infra import tracing

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        tracing.use_provider(provider)
    return provider
