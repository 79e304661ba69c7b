"""What `dagnats status` shows of the cluster: the live engines, which partitions each
owns, how old each heartbeat is, and each partition's backlog."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats.domain.events import parse_timestamp

from ..wire.names import INBOX_STREAM
from .inbox import LEGACY, consumer_name
from .leases import heartbeats, owners
from .streams import LEASE_TTL


async def cluster_view(js: JetStreamContext, partitions: int, this_engine: str) -> dict[str, Any]:
    beats, owned = await asyncio.gather(heartbeats(js), owners(js))
    now = datetime.now(UTC)
    live = {beat.engine for beat in beats}
    engines = [
        {
            "engine": beat.engine,
            "pid": beat.pid,
            "host": beat.host,
            "started_at": beat.started_at,
            "lease_age_s": round((now - parse_timestamp(beat.renewed_at)).total_seconds(), 1)
            if beat.renewed_at
            else None,
            "partitions": list(beat.partitions),
            "this": beat.engine == this_engine,
        }
        for beat in sorted(beats, key=lambda b: b.engine)
    ]
    lags = await asyncio.gather(*(_lag(js, p) for p in range(partitions)))
    table = []
    for p, (pending, in_flight) in enumerate(lags):
        owner = owned.get(p)
        table.append(
            {
                "partition": p,
                "owner": owner,
                "owner_live": owner in live,
                "pending": pending,
                "in_flight": in_flight,
            }
        )
    legacy = await _lag(js, LEGACY)
    return {
        "partitions": partitions,
        "lease_ttl_s": LEASE_TTL,
        "engines": engines,
        "partition_table": table,
        "unowned": [row["partition"] for row in table if not row["owner_live"]],
        "legacy_pending": legacy[0],
    }


async def _lag(js: JetStreamContext, partition: int) -> tuple[int | None, int | None]:
    """Facts waiting in the partition's consumer, and fetched but not yet acknowledged."""
    try:
        info = await js.consumer_info(INBOX_STREAM, consumer_name(partition))
    except NotFoundError:
        return None, None
    return info.num_pending, info.num_ack_pending
