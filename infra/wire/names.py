"""Names of the engine's JetStream streams and KV buckets, and the control plane's subjects."""

from __future__ import annotations

HISTORY_STREAM = "WORKFLOW_HISTORY"
# The inbox stream also holds the runs' timers, as message schedules (`schedule.<run>.<timer>`).
INBOX_STREAM = "RUN_INBOX"
TASK_STREAM = "TASK_QUEUES"
EVENT_STREAM = "EVENTS"
DEAD_LETTER_STREAM = "DEAD_LETTERS"

DEFS_BUCKET = "workflow_defs"
RUNS_BUCKET = "workflow_runs"
SIGNALS_BUCKET = "signals"
CHECKPOINTS_BUCKET = "checkpoints"
IDEMPOTENCY_BUCKET = "idempotency_keys"
SINGLETON_BUCKET = "singleton_locks"
WAITERS_BUCKET = "event_waiters"
WORKERS_BUCKET = "workers"
# Approval requests' one-time tokens (their digests), by run and step.
APPROVALS_BUCKET = "approval_tokens"
# Flow control: one entry per limit key (slot pools, rate windows), changed by compare-and-set.
FLOW_BUCKET = "flow_control"
# Clustering: each live engine's heartbeat (keys lapse after the lease TTL), and each
# partition's owner (`p<n>` -> engine id; valid while that engine's heartbeat lives).
ENGINES_BUCKET = "engines"
OWNERS_BUCKET = "partition_owners"
# Triggers (infra/triggers.py), debounced bursts (infra/debouncer.py), HTTP trigger
# idempotency claims and answers (infra/http/idempotency.py).
TRIGGERS_BUCKET = "triggers"
DEBOUNCE_BUCKET = "debounce_state"
HTTP_IDEMPOTENCY_BUCKET = "http_idempotency"

# The control plane: request/reply on `dagnats.api.<op>`, served by every
# engine in one queue group.
API_PREFIX = "dagnats.api"
API_QUEUE = "dagnats-api"
