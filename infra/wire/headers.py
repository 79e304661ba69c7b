"""NATS header names and JetStream error codes the engine relies on, in one place.

See RELIABILITY.md §2.3 (conditional appends) and §2.7 (message schedules).
"""

# Deduplication: a re-publish with the same id inside the stream's
# duplicate window is acknowledged as a duplicate and stores nothing.
MSG_ID = "Nats-Msg-Id"

# Optimistic concurrency: the append lands only if the subject's last
# sequence is this value ("0" = the subject must be empty).
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"

# Message schedules (ADR-51, nats-server >= 2.12) on a schedule message:
SCHEDULE = "Nats-Schedule"  # "@at 2026-11-24T02:40:18Z" (fractional seconds allowed)
SCHEDULE_TARGET = "Nats-Schedule-Target"  # subject in the same stream that receives the fire
SCHEDULE_TTL = "Nats-Schedule-TTL"  # becomes Nats-TTL on the fired message: "168h" or "3" (seconds)

# Set by the server on a fired message; also what a publish uses to cancel
# a schedule (Nats-Scheduler: <schedule subject>, Nats-Schedule-Next: purge).
SCHEDULER = "Nats-Scheduler"
SCHEDULE_NEXT = "Nats-Schedule-Next"
SCHEDULE_NEXT_PURGE = "purge"

# On a task: where its worker may hand the result straight to the run's owner
# (`dagnats.handoff.<partition>`, request/reply) instead of the run's inbox.
HANDOFF = "Dagnats-Handoff"

# W3C trace context, carried API -> engine -> worker -> engine.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"

# JetStream error code of a failed Nats-Expected-Last-Subject-Sequence check
# ("wrong last sequence"); 10164 is a constant variant of the same failure.
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_CODES = frozenset({WRONG_LAST_SEQUENCE, 10164})

# On a message read by a direct get: when the stream stored it (RFC3339, nanoseconds).
STORED_AT = "Nats-Time-Stamp"

# On a dead letter (DEAD_LETTERS, `dead.<task>.<run>.<step>`): what it is and why it is there.
DLQ_RUN_ID = "Dagnats-Dlq-Run-Id"
DLQ_STEP_ID = "Dagnats-Dlq-Step-Id"
DLQ_TASK = "Dagnats-Dlq-Task"
DLQ_WORKFLOW = "Dagnats-Dlq-Workflow"
DLQ_REASON = "Dagnats-Dlq-Reason"  # max_deliveries | non_retriable | failed
DLQ_ERROR = "Dagnats-Dlq-Error"
DLQ_ATTEMPTS = "Dagnats-Dlq-Attempts"  # the attempt the task was for
DLQ_DELIVERY_COUNT = "Dagnats-Dlq-Delivery-Count"  # deliveries to workers (max_deliveries only)
DLQ_TASK_SUBJECT = "Dagnats-Dlq-Task-Subject"  # where the task was queued
