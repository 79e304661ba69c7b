"""The worker registry's record, in the ``workers`` KV (one key per live worker).

Each worker puts its record every second; the bucket's keys expire four
seconds after their last write, so a worker killed with -9 drops out within
about four seconds and one that stops gracefully deletes its key at once.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from .names import WORKERS_BUCKET
from .reading import kv_entries

HEARTBEAT = 1.0  # seconds between a worker's puts (the bucket's TTL is 4 s)
RECORD_TTL = 4.0


class WorkerRecord(msgspec.Struct, frozen=True):
    worker_id: str
    tasks: list[str]
    groups: list[str]
    pid: int
    hostname: str
    last_seen: str
    # What the worker offers to steps with required_capabilities (records of workers
    # from before capabilities have none).
    capabilities: list[str] = []


WORKER_RECORD_DECODER = msgspec.json.Decoder(WorkerRecord)


async def live_workers(js: JetStreamContext) -> list[WorkerRecord]:
    """Every worker in the registry, in one batched read of the bucket (a record that
    does not decode says nothing about its worker, and is left out)."""
    records = []
    for _, value in await kv_entries(js, WORKERS_BUCKET, ">"):
        try:
            records.append(WORKER_RECORD_DECODER.decode(value))
        except msgspec.DecodeError:
            continue
    return records


async def worker_alive(js: JetStreamContext, worker_id: str) -> bool:
    """Whether the worker's record is still in the registry."""
    try:
        entry = await (await js.key_value(WORKERS_BUCKET)).get(worker_id)
    except (KeyNotFoundError, NotFoundError):
        return False
    return bool(entry and entry.value)
