"""Which partition a run belongs to, and which engine should own each partition.

Runs are divided into a fixed number of partitions by FNV-1a (32 bit) of the run
id, modulo the count: the same function as nats-server's ``partition(n, 1)``
subject mapping (``getHashPartition`` in server/subject_transform.go), so the
server files each inbox message under its partition and the engine computes the
same number without asking. The count is fixed when the inbox stream is
created: changing it would move every run to another partition.

Ownership is decided by rendezvous hashing: each partition goes to the live
engine with the highest hash of (partition, engine). Every engine computes the
same answer from the same membership, and an engine joining or leaving moves
only the partitions it gains or loses.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK = 0xFFFFFFFF

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 256


@functools.lru_cache(maxsize=1 << 16)  # a run's id is hashed for each of its facts and tasks
def fnv1a32(text: str) -> int:
    """FNV-1a, 32 bit, of the UTF-8 bytes of ``text``."""
    h = _FNV_OFFSET
    for byte in text.encode():
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def partition_of(run_id: str, partitions: int) -> int:
    """The partition of ``run_id`` among ``partitions`` (as the server's mapping files it)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    return fnv1a32(run_id) % partitions


def owner_of(partition: int, engines: Iterable[str]) -> str | None:
    """The engine that should own ``partition`` among the live ``engines`` (None: none live)."""
    best: tuple[int, str] | None = None
    for engine in engines:
        score = (fnv1a32(f"{partition}/{engine}"), engine)
        if best is None or score > best:
            best = score
    return best[1] if best is not None else None


def assignment(partitions: int, engines: Iterable[str]) -> dict[int, str | None]:
    """Every partition's owner among ``engines``."""
    live = sorted(set(engines))
    return {p: owner_of(p, live) for p in range(partitions)}
