"""The reactive engine's metrics, named as the seed names them.

They live on the engine's MeterProvider (``infra.metrics.setup_metrics``): the
same in-memory reader and, when the OTEL_* environment configures one, the same
OTLP exporter as the engine's own ``dagnats.*`` metrics, under the meter
(instrumentation scope) ``dagnats.reactive``.
"""

from __future__ import annotations

from typing import Any

SCOPE = "dagnats.reactive"


class ReactiveMetrics:
    def __init__(self, meter: Any = None) -> None:
        if meter is None:
            from .. import metrics as engine_metrics

            meter = engine_metrics.meter(SCOPE, service="dagnats-reactive")
        counter = meter.create_counter
        self.executions_created = counter("reactive_executions_created_total")
        self.executions_completed = counter("reactive_executions_completed_total")
        self.executions_failed = counter("reactive_executions_failed_total")
        self.executions_escalated = counter("reactive_executions_escalated_total")
        self.executions_timed_out = counter("reactive_executions_timed_out_total")
        self.rule_evaluations = counter("reactive_rule_evaluations_total")
        self.rule_firings = counter("reactive_rule_firings_total")
        self.action_dispatches = counter("reactive_action_dispatches_total")
        self.callback_latency = meter.create_histogram("reactive_callback_latency_seconds", unit="s")
        # status: applied, or ignored (late or duplicate: not the pending task's)
        self.callbacks_received = counter("reactive_callbacks_received_total")
        self.pending_callbacks = meter.create_up_down_counter("reactive_pending_callbacks")
        # From creation to the end, by status (the seed's durationSeconds of each ending).
        self.execution_duration = meter.create_histogram("reactive_execution_duration_seconds", unit="s")
        self._ended = {
            "completed": self.executions_completed,
            "failed": self.executions_failed,
            "escalated": self.executions_escalated,
            "timed_out": self.executions_timed_out,
        }

    def ended(self, workflow_id: str, status: str, duration_s: float | None = None) -> None:
        if status in self._ended:
            self._ended[status].add(1, {"workflow_id": workflow_id})
        if duration_s is not None:
            self.execution_duration.record(duration_s, {"workflow_id": workflow_id, "status": status})
