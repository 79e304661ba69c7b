"""Engine metrics, derived from the history the trace projector folds.

Counted once per record, by whichever engine projects it (the projector's
durable consumer hands each record to one engine), so summing a metric over
engines gives the cluster's figure. Instruments:

    dagnats.runs.started / .completed / .failed   counters, by workflow
    dagnats.run.duration                          histogram (ms), by workflow and status
    dagnats.step.latency                          histogram (ms): an attempt, queued -> result
    dagnats.step.queue_latency                    histogram (ms): queued -> started
    dagnats.step.retries                          counter: attempts after the first
    dagnats.history.records                       counter: history appends projected

and, counted by the engine where things happen (its own figures, not the cluster's):

    dagnats.history.appends                       counter, by outcome: ok | conflict (another
                                                  writer moved the history: OCC wrong last sequence)
    dagnats.timer.lateness                        histogram (ms): a timer's fact reaching the
                                                  engine - its due time
    dagnats.actors                                gauge: live run actors
    dagnats.inbox.lag                             gauge, by partition: facts not yet delivered
                                                  (the partition consumer's num_pending)
    dagnats.dlq.depth                             gauge: dead letters stored
    dagnats.tasks.in_flight / .queued             gauges: tasks handed to workers and not yet
                                                  acknowledged / waiting for a worker
    dagnats.worker.tasks.in_flight                up-down counter, in a worker: handlers running

Gauges are sampled every few seconds (``infra/engine/engine_gauges.py``).
Exported by OTLP when ``OTEL_METRICS_EXPORTER`` / an OTLP endpoint says so;
``prometheus_text()`` renders the same figures for an HTTP ``/metrics``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dagnats.domain import events as ev
from dagnats.domain.trace_spans import ATTEMPT, RUN, Span

from . import otel_config

log = logging.getLogger("dagnats.metrics")


class EngineMetrics:
    def __init__(self, meter: Any, reader: Any) -> None:
        self.reader = reader
        self.started = meter.create_counter("dagnats.runs.started", description="runs started")
        self.completed = meter.create_counter("dagnats.runs.completed", description="runs completed")
        self.failed = meter.create_counter("dagnats.runs.failed", description="runs failed")
        self.run_duration = meter.create_histogram("dagnats.run.duration", unit="ms")
        self.step_latency = meter.create_histogram("dagnats.step.latency", unit="ms")
        self.queue_latency = meter.create_histogram("dagnats.step.queue_latency", unit="ms")
        self.retries = meter.create_counter("dagnats.step.retries")
        self.timer_lateness = meter.create_histogram("dagnats.timer.lateness", unit="ms")
        self.records = meter.create_counter("dagnats.history.records")
        meter.create_observable_counter(
            "dagnats.history.appends", callbacks=[APPENDS.observer("outcome")], description="history appends"
        )
        meter.create_observable_up_down_counter(
            "dagnats.worker.tasks.in_flight", callbacks=[TASKS_RUNNING.observer("task")], description="handlers running"
        )
        self.readings: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...] = ()
        for name, description in GAUGES.items():
            meter.create_observable_gauge(name, callbacks=[self._observer(name)], description=description)

    def _observer(self, name: str) -> Any:
        def observe(options: Any) -> list[Any]:
            from opentelemetry.metrics import Observation

            return [Observation(value, dict(labels)) for gauge, labels, value in self.readings if gauge == name]

        return observe

    def observe(self, workflow: str, events: list[ev.Event], done: list[Span]) -> None:
        labels = {"workflow": workflow}
        self.records.add(1, labels)
        for event in events:
            if isinstance(event.payload, ev.RunStart):
                self.started.add(1, {"workflow": event.payload.workflow_def.name})
        for span in done:
            if span.kind == RUN:
                status = span.attributes.get("dagnats.status", "")
                if status == "completed":
                    self.completed.add(1, labels)
                elif status in ("failed", "compensated", "compensate_failed"):
                    self.failed.add(1, labels)
                self.run_duration.record(_millis(span.start, span.end), {**labels, "status": status})
            elif span.kind == ATTEMPT:
                step = {**labels, "step": span.step_id}
                self.step_latency.record(_millis(span.start, span.end), step)
                if "dagnats.queue_ms" in span.attributes:
                    self.queue_latency.record(span.attributes["dagnats.queue_ms"], step)
                if span.attempt > 1:
                    self.retries.add(1, step)


def _millis(start: str, end: str) -> float:
    try:
        return max(0.0, (ev.parse_timestamp(end) - ev.parse_timestamp(start)).total_seconds() * 1000)
    except (ValueError, TypeError):
        return 0.0


_metrics: EngineMetrics | None = None

GAUGES = {
    "dagnats.actors": "live run actors in this engine",
    "dagnats.inbox.lag": "facts waiting in a partition's inbox (its consumer's num_pending)",
    "dagnats.dlq.depth": "dead letters stored",
    "dagnats.tasks.in_flight": "tasks delivered to workers and not yet acknowledged",
    "dagnats.tasks.queued": "tasks waiting for a worker",
}


class Tally:
    """Counts by one label, kept by one thread (the event loop) and read by the metric
    readers: a count on the hot path is an addition, not an instrument call (~7 us)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def observer(self, label: str) -> Any:
        def observe(options: Any) -> list[Any]:
            from opentelemetry.metrics import Observation

            return [Observation(value, {label: key}) for key, value in list(self.counts.items())]

        return observe


APPENDS = Tally()  # history appends by outcome, in this engine
TASKS_RUNNING = Tally()  # handlers running by task, in this worker process


def append_outcome(outcome: str) -> None:
    """Count one history append: ``ok``, ``conflict`` or ``duplicate``."""
    APPENDS.add(outcome)


def timer_lateness(ms: float, kind: str) -> None:
    """A timer's fact reached the engine ``ms`` after it fell due."""
    if _metrics is not None:
        _metrics.timer_lateness.record(max(0.0, ms), {"kind": kind})


def set_readings(readings: list[tuple[str, dict[str, str], float]]) -> None:
    """The gauges' latest sample (``(name, labels, value)``), replaced as a whole."""
    if _metrics is not None:
        _metrics.readings = tuple((name, tuple(sorted(labels.items())), value) for name, labels, value in readings)


def setup_metrics(service: str) -> EngineMetrics:
    """The process's metrics: always readable in memory (``prometheus_text``), and
    exported by OTLP when the environment configures it."""
    global _metrics
    if _metrics is not None:
        return _metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader

    memory = InMemoryMetricReader()
    readers: list[Any] = [memory]
    if otel_config.exporter_name("METRICS") == "otlp":
        try:
            exporter: Any
            if otel_config.protocol("METRICS") == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

                exporter = Grpc()
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

                exporter = OTLPMetricExporter()
            interval = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL") or 60000)
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval))
        except Exception as err:  # noqa: BLE001 - metrics never stop the engine
            log.warning("OTLP metrics are off: %s", err)
    provider = MeterProvider(resource=otel_config.resource(service), metric_readers=readers)
    _metrics = EngineMetrics(provider.get_meter("dagnats.engine"), memory)
    _metrics.provider = provider  # type: ignore[attr-defined]
    return _metrics


def meter(name: str, service: str = "dagnats") -> Any:
    """A meter on the process's MeterProvider, exported with the engine's metrics
    (the reactive engine's ``dagnats.reactive`` instruments use it)."""
    return setup_metrics(service).provider.get_meter(name)  # type: ignore[attr-defined]


def shutdown() -> None:
    if _metrics is not None:
        try:
            _metrics.provider.shutdown()  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001
            log.debug("metrics shutdown: %s", err)


def prometheus_text() -> str:
    """The metrics in the Prometheus text format (for the HTTP API's ``/metrics``)."""
    if _metrics is None:
        return ""
    data = _metrics.reader.get_metrics_data()
    lines: list[str] = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            if sm.scope.name not in ("dagnats.engine", "dagnats.worker"):
                continue  # other meters (dagnats.reactive) name their units and totals themselves
            for metric in sm.metrics:
                name = metric.name.replace(".", "_")
                points = metric.data.data_points
                if _is_gauge(metric.data):
                    lines.append(f"# TYPE {name} gauge")
                    lines += [f"{name}{_labels(p.attributes)} {p.value}" for p in points]
                elif hasattr(points[0] if points else None, "bucket_counts"):
                    lines.append(f"# TYPE {name}_milliseconds histogram")
                    for p in points:
                        lines += _histogram(f"{name}_milliseconds", p)
                else:
                    lines.append(f"# TYPE {name}_total counter")
                    lines += [f"{name}_total{_labels(p.attributes)} {p.value}" for p in points]
    return "\n".join(lines) + "\n"


def _is_gauge(data: Any) -> bool:
    """A gauge, or an up-down counter (a sum that may go down)."""
    from opentelemetry.sdk.metrics.export import Gauge, Sum

    return isinstance(data, Gauge) or (isinstance(data, Sum) and not data.is_monotonic)


def _labels(attributes: Any, **extra: str) -> str:
    pairs = {**dict(attributes or {}), **extra}
    if not pairs:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in pairs.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(pairs, escaped, strict=True)) + "}"


def _histogram(name: str, p: Any) -> list[str]:
    out, running = [], 0
    for bound, count in zip(list(p.explicit_bounds) + ["+Inf"], p.bucket_counts, strict=True):
        running += count
        out.append(f"{name}_bucket{_labels(p.attributes, le=str(bound))} {running}")
    out.append(f"{name}_sum{_labels(p.attributes)} {p.sum}")
    out.append(f"{name}_count{_labels(p.attributes)} {p.count}")
    return out
