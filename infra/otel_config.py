"""The standard OpenTelemetry environment, read once: which exporter, where, as whom.

``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; default ``otlp`` when an
OTLP endpoint is configured, else ``none``: tracing then costs nothing),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (read
by the exporters themselves), ``OTEL_EXPORTER_OTLP_PROTOCOL`` /
``..._TRACES_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (they win over the
process's default service name). ``--otlp-endpoint`` on ``serve`` and
``worker`` sets ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``use_endpoint``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("dagnats.otel")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def use_endpoint(endpoint: str | None) -> None:
    """``--otlp-endpoint``: the same as setting ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    if endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint


def exporter_name(signal: str = "TRACES") -> str:
    default = "otlp" if any(os.environ.get(name) for name in _ENDPOINTS) else "none"
    if signal != "TRACES":
        default = (
            "otlp"
            if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
            else "none"
        )
    name = (os.environ.get(f"OTEL_{signal}_EXPORTER") or default).split(",")[0].strip().lower()
    return name if name in ("otlp", "console", "none") else "none"


def protocol(signal: str = "TRACES") -> str:
    value = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return "grpc" if (value or "").strip().lower() == "grpc" else "http/protobuf"


def resource(default_service: str) -> Any:
    """The process's resource: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win."""
    import socket

    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = {"host.name": socket.gethostname(), "process.pid": os.getpid()}
    from_env = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not from_env:
        attributes["service.name"] = default_service
    return Resource.create(attributes)


def span_exporter() -> Any | None:
    """A new span exporter as the environment asks, or None when traces are off."""
    name = exporter_name()
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
