"""Log set-up for ``serve`` and ``worker``: run context on every line, text or JSON, OTLP.

Every record gets ``run_id``, ``step_id`` and ``trace_id`` (``RunContextFilter``,
from ``domain/run_context.py``; empty outside a run's work). The text format
shows them as `` run=... step=... trace=...`` when set; ``--log-format json``
(or ``DAGNATS_LOG_FORMAT=json``) writes one JSON object per line. With
``OTEL_LOGS_EXPORTER=otlp`` (or an OTLP endpoint configured and the exporter
not ``none``) records also go to an OpenTelemetry ``LoggingHandler``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from dagnats.domain.run_context import current

from . import otel_config

log = logging.getLogger("dagnats.logs")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(run_suffix)s"
FORMATS = ("text", "json")


class RunContextFilter(logging.Filter):
    """Adds ``run_id``, ``step_id``, ``trace_id`` (and the text suffix) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id, record.step_id, record.trace_id = current()
        record.run_suffix = _suffix(record)
        return True


def _suffix(record: logging.LogRecord) -> str:
    pairs = (("run", "run_id"), ("step", "step_id"), ("trace", "trace_id"))
    return "".join(f" {name}={value}" for name, field in pairs if (value := getattr(record, field, "")))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", ""),
            "step_id": getattr(record, "step_id", ""),
            "trace_id": getattr(record, "trace_id", ""),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_format(flag: str | None) -> str:
    """``--log-format``, else ``DAGNATS_LOG_FORMAT``, else text."""
    chosen = (flag or os.environ.get("DAGNATS_LOG_FORMAT") or "text").strip().lower()
    return chosen if chosen in FORMATS else "text"


def setup_logging(level: int, fmt: str = "text", service_name: str = "") -> None:
    """Configure the root logger: one stderr handler, the run context filter, OTLP if asked."""
    handler = logging.StreamHandler()
    handler.addFilter(RunContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if service_name:
        setup_log_export(service_name)


def setup_log_export(service_name: str) -> logging.Handler | None:
    """Attach an OTLP ``LoggingHandler`` when the environment asks; never fails the process."""
    if otel_config.exporter_name("LOGS") != "otlp":
        return None
    try:
        handler = _otlp_handler(service_name)
    except Exception as err:  # noqa: BLE001 - log export never stops a process from starting
        log.warning("log export is off: %s", err)
        return None
    handler.addFilter(RunContextFilter())
    # The exporter's own complaints stay local: exporting them could loop.
    handler.addFilter(lambda record: not record.name.startswith("opentelemetry"))
    logging.getLogger().addHandler(handler)
    return handler


def _otlp_handler(service_name: str) -> logging.Handler:
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    if otel_config.protocol("LOGS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # type: ignore[assignment]
    provider = LoggerProvider(resource=otel_config.resource(service_name))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    return LoggingHandler(logger_provider=provider)
