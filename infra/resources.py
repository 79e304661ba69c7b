"""The engine's JetStream streams and KV buckets, their subjects, and their creation.

`ensure_resources(js)` is safe to call on every start and from several
processes at once: creating a stream that already exists with the same
configuration is a no-op for JetStream, and a differing one is updated in place.

Every identifier that becomes a subject token (run id, task, group, timer id,
event name) must match `^[A-Za-z0-9_-]{1,64}$`: a `*` or `>` in a run id would
otherwise read or write every run's history.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext, api
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, ServiceUnavailableError

from dagnats.domain.errors import DagnatsError, InvalidIdentifier
from dagnats.domain.identifiers import check_identifier

HISTORY_STREAM = "WORKFLOW_HISTORY"
INBOX_STREAM = "RUN_INBOX"
TASK_STREAM = "TASK_QUEUES"
TIMER_STREAM = "TIMERS"
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
KV_BUCKETS = (
    DEFS_BUCKET,
    RUNS_BUCKET,
    SIGNALS_BUCKET,
    CHECKPOINTS_BUCKET,
    IDEMPOTENCY_BUCKET,
    SINGLETON_BUCKET,
    WAITERS_BUCKET,
    WORKERS_BUCKET,
)

DUPLICATE_WINDOW = 120.0  # seconds: the longest client retry horizon we dedupe across
EVENT_MAX_AGE = 14 * 24 * 3600.0
DEAD_LETTER_MAX_AGE = 30 * 24 * 3600.0

# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058



# Identifiers are checked with the domain's grammar; the error names the kind.
InvalidSubjectTokenError = InvalidIdentifier


class ResourceError(DagnatsError, RuntimeError):
    """A stream or bucket exists with a configuration that cannot be updated."""

    def __init__(self, name: str, cause: APIError) -> None:
        self.name, self.err_code = name, cause.err_code
        super().__init__(f"cannot create or update {name}: {cause.description} (error {cause.err_code})")


# -- subjects ---------------------------------------------------------------


def _token(kind: str, value: str) -> str:
    return check_identifier(kind, value)


def history_subject(run_id: str) -> str:
    """`history.<run>`: the run's event history, the source of truth."""
    return f"history.{_token('run id', run_id)}"


def inbox_subject(run_id: str) -> str:
    """`inbox.<run>`: facts from outside the run's owner, waiting to be recorded."""
    return f"inbox.{_token('run id', run_id)}"


def task_subject(task: str, run_id: str, group: str | None = None) -> str:
    """`task.<task>.<run>`, or `task.<task>.<group>.<run>` for a worker group."""
    task, run_id = _token("task name", task), _token("run id", run_id)
    if group is None:
        return f"task.{task}.{run_id}"
    return f"task.{task}.{_token('worker group', group)}.{run_id}"


def timer_sched_subject(run_id: str, timer_id: str) -> str:
    """`timer.sched.<run>.<timer>`: one message schedule per timer (purge it to cancel)."""
    return f"timer.sched.{_token('run id', run_id)}.{_token('timer id', timer_id)}"


def timer_fired_subject(run_id: str) -> str:
    """`timer.fired.<run>`: where the server publishes a schedule when it falls due."""
    return f"timer.fired.{_token('run id', run_id)}"


def event_subject(name: str) -> str:
    """`event.<name>`: an external event for wait-for-event steps and cancel_on."""
    return f"event.{_token('event name', name)}"


# -- streams and buckets ----------------------------------------------------


def stream_configs(replicas: int = 1) -> list[api.StreamConfig]:
    """The configuration of every engine stream, at `replicas` copies each."""

    def stream(name: str, subjects: list[str], retention: api.RetentionPolicy, **extra: object) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            retention=retention,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
            **extra,
        )

    limits, work_queue = api.RetentionPolicy.LIMITS, api.RetentionPolicy.WORK_QUEUE
    return [
        stream(HISTORY_STREAM, ["history.>"], limits),
        stream(INBOX_STREAM, ["inbox.>"], work_queue),
        stream(TASK_STREAM, ["task.>"], work_queue),
        # Limits retention and no max_age: a schedule must outlive its longest
        # timer, and a consumer acking it must not delete it.
        stream(
            TIMER_STREAM,
            ["timer.sched.>", "timer.fired.>"],
            limits,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
        ),
        stream(EVENT_STREAM, ["event.>"], limits, max_age=EVENT_MAX_AGE),
        stream(DEAD_LETTER_STREAM, ["dead.>"], limits, max_age=DEAD_LETTER_MAX_AGE),
    ]


async def ensure_resources(js: JetStreamContext, replicas: int = 1) -> None:
    """Create, or bring up to date, every stream and KV bucket the engine uses."""
    await asyncio.gather(*(_patiently(_ensure_stream, js, config) for config in stream_configs(replicas)))
    await asyncio.gather(*(_patiently(_ensure_bucket, js, bucket, replicas) for bucket in KV_BUCKETS))


async def _patiently(create, *args, attempts: int = 8) -> None:
    """Retry what a busy or electing cluster answers late (the JetStream API times out)."""
    for attempt in range(attempts):
        try:
            return await create(*args)
        except (NatsTimeoutError, ServiceUnavailableError, NoRespondersError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(0.25 * 2**attempt, 4.0))


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise ResourceError(config.name or "?", exc) from exc
        await _update(js, config)


# Buckets whose keys expire: an idempotency key dedups starts for a day.
BUCKET_TTL = {IDEMPOTENCY_BUCKET: 24 * 3600.0, WORKERS_BUCKET: 4.0}


async def _ensure_bucket(js: JetStreamContext, bucket: str, replicas: int) -> None:
    config = api.KeyValueConfig(
        bucket=bucket, history=1, replicas=replicas, storage=api.StorageType.FILE, ttl=BUCKET_TTL.get(bucket),
    )
    try:
        await js.create_key_value(config)
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise ResourceError(bucket, exc) from exc
        # The bucket's stream is built by nats-py; change only what we own.
        current = (await js.stream_info(f"KV_{bucket}")).config
        current.num_replicas = replicas
        current.max_msgs_per_subject = 1
        if bucket in BUCKET_TTL:
            current.max_age = BUCKET_TTL[bucket]
        await _update(js, current)


async def _update(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.update_stream(config)
    except APIError as exc:
        raise ResourceError(config.name or "?", exc) from exc
