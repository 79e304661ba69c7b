"""Creating the engine's JetStream streams and KV buckets (names in ``wire.names``).

`ensure_resources(js)` is safe to call on every start and from several
processes at once: creating a stream that already exists with the same
configuration is a no-op for JetStream, and a differing one is updated in place.

The inbox stream files each fact published on ``inbox.<run>`` under
``inbox.<partition>.<run>`` (a subject transform with the server's ``partition()``
function); the partition count is the transform's, fixed when the stream is first
created with one and kept by every later start whatever it asks for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from dagnats.domain.errors import DagnatsError
from dagnats.domain.partition import DEFAULT_PARTITIONS, MAX_PARTITIONS

from ..wire.names import (
    APPROVALS_BUCKET,
    CHECKPOINTS_BUCKET,
    DEAD_LETTER_STREAM,
    DEBOUNCE_BUCKET,
    DEFS_BUCKET,
    ENGINES_BUCKET,
    EVENT_STREAM,
    FLOW_BUCKET,
    HISTORY_STREAM,
    HTTP_IDEMPOTENCY_BUCKET,
    IDEMPOTENCY_BUCKET,
    INBOX_STREAM,
    OWNERS_BUCKET,
    RUNS_BUCKET,
    SIGNALS_BUCKET,
    SINGLETON_BUCKET,
    TASK_STREAM,
    TRIGGERS_BUCKET,
    WAITERS_BUCKET,
    WORKERS_BUCKET,
)
from ..wire.outage import NATS_UNAVAILABLE

KV_BUCKETS = (
    DEFS_BUCKET,
    RUNS_BUCKET,
    SIGNALS_BUCKET,
    CHECKPOINTS_BUCKET,
    IDEMPOTENCY_BUCKET,
    SINGLETON_BUCKET,
    WAITERS_BUCKET,
    WORKERS_BUCKET,
    APPROVALS_BUCKET,
    FLOW_BUCKET,
    ENGINES_BUCKET,
    OWNERS_BUCKET,
    TRIGGERS_BUCKET,
    DEBOUNCE_BUCKET,
    HTTP_IDEMPOTENCY_BUCKET,
)

DUPLICATE_WINDOW = 120.0  # seconds: the longest client retry horizon we dedupe across
EVENT_MAX_AGE = 14 * 24 * 3600.0
DEAD_LETTER_MAX_AGE = 30 * 24 * 3600.0

# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
# JetStream, while a cluster forms or a node restarts: "no suitable peers for placement"
# (a peer not yet current) and "JetStream system temporarily unavailable".
_PLACEMENT_LATER = frozenset({10005, 10008})


class ResourceError(DagnatsError, RuntimeError):
    """A stream or bucket exists with a configuration that cannot be updated."""

    def __init__(self, name: str, cause: APIError) -> None:
        self.name, self.err_code = name, cause.err_code
        super().__init__(f"cannot create or update {name}: {cause.description} (error {cause.err_code})")


# -- streams and buckets ----------------------------------------------------


LEASE_TTL = 10.0  # seconds an engine's heartbeat lives without renewal


def partition_transform(partitions: int) -> api.SubjectTransform:
    return api.SubjectTransform(src="inbox.*", dest=f"inbox.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}")


def transform_partitions(config: api.StreamConfig) -> int | None:
    """The partition count an inbox stream's transform files runs under (None: no transform)."""
    transform = config.subject_transform
    if transform is None or not transform.dest:
        return None
    text = transform.dest.split("partition(", 1)[-1].split(",", 1)[0]
    return int(text) if text.isdigit() else None


def stream_configs(replicas: int = 1, partitions: int = DEFAULT_PARTITIONS) -> list[api.StreamConfig]:
    """The configuration of every engine stream, at `replicas` copies each."""

    def stream(name: str, subjects: list[str], retention: api.RetentionPolicy, **extra: Any) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            retention=retention,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,  # readers fetch many messages per request (wire.reading)
            **extra,
        )

    limits, work_queue = api.RetentionPolicy.LIMITS, api.RetentionPolicy.WORK_QUEUE
    return [
        stream(HISTORY_STREAM, ["history.>"], limits),
        # Timers are message schedules beside the facts they fire (ADR-51 targets a
        # subject of the schedule's own stream); the engine consumes only inbox.>.
        stream(
            INBOX_STREAM,
            ["inbox.>", "schedule.>"],
            work_queue,
            allow_msg_schedules=True,
            subject_transform=partition_transform(partitions),
        ),
        stream(TASK_STREAM, ["task.>"], work_queue),
        stream(EVENT_STREAM, ["event.>"], limits, max_age=EVENT_MAX_AGE),
        stream(DEAD_LETTER_STREAM, ["dead.>"], limits, max_age=DEAD_LETTER_MAX_AGE),
    ]


async def ensure_resources(js: JetStreamContext, replicas: int = 1, partitions: int | None = None) -> int:
    """Create, or bring up to date, every stream and KV bucket the engine uses; the
    partition count runs are divided into (the recorded one, once there is one)."""
    count = await patiently(_recorded_partitions, js) or partitions or DEFAULT_PARTITIONS
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {count}")
    await asyncio.gather(*(patiently(_ensure_stream, js, config) for config in stream_configs(replicas, count)))
    await asyncio.gather(*(patiently(_ensure_bucket, js, bucket, replicas) for bucket in KV_BUCKETS))
    return count


async def _recorded_partitions(js: JetStreamContext) -> int | None:
    try:
        return transform_partitions((await js.stream_info(INBOX_STREAM)).config)
    except NotFoundError:
        return None


async def patiently(create, *args, attempts: int = 8) -> Any:
    """Retry what a busy or electing cluster answers late (the JetStream API times out)
    or cannot place yet (a peer of a forming cluster not current): about 20 s in all."""
    for attempt in range(attempts):
        try:
            return await create(*args)
        except (*NATS_UNAVAILABLE, ResourceError) as exc:  # type: ignore[misc]
            if attempt == attempts - 1 or not _later(exc):
                raise
            await asyncio.sleep(min(0.25 * 2**attempt, 4.0))


def _later(exc: BaseException) -> bool:
    """Whether the same request may succeed a moment later."""
    return not isinstance(exc, ResourceError) or exc.err_code in _PLACEMENT_LATER


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise ResourceError(config.name or "?", exc) from exc
        await _update(js, config)


# Buckets whose keys expire: an idempotency key dedups starts for a day.
BUCKET_TTL = {
    IDEMPOTENCY_BUCKET: 24 * 3600.0,
    WORKERS_BUCKET: 4.0,
    APPROVALS_BUCKET: 168 * 3600.0,
    ENGINES_BUCKET: LEASE_TTL,
    DEBOUNCE_BUCKET: 14 * 24 * 3600.0,  # twice the longest debounce: a deleted trigger's bursts go
    HTTP_IDEMPOTENCY_BUCKET: 3600.0,
}


async def _ensure_bucket(js: JetStreamContext, bucket: str, replicas: int) -> None:
    config = api.KeyValueConfig(
        bucket=bucket,
        history=1,
        replicas=replicas,
        storage=api.StorageType.FILE,
        ttl=BUCKET_TTL.get(bucket),
        direct=True,
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
        current.allow_direct = True
        if bucket in BUCKET_TTL:
            current.max_age = BUCKET_TTL[bucket]
        await _update(js, current)


async def _update(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.update_stream(config)
    except APIError as exc:
        raise ResourceError(config.name or "?", exc) from exc
