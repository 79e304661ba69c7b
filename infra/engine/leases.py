"""Which engine consumes which partition: heartbeats and owner keys in KV.

Theory of operation. Each engine puts a heartbeat under its id in the
``engines`` bucket every ``RENEW_EVERY`` seconds; the bucket's TTL makes a
heartbeat lapse ``LEASE_TTL`` seconds after the last renewal, on the server's
clock. Each partition has an owner key ``p<n>`` in ``partition_owners``
(the owning engine's id); an ownership is valid while that engine's heartbeat
lives. On every tick each engine computes the same assignment of partitions
to the live engines (rendezvous hashing, ``domain.partition``) and moves
towards it:

- a partition assigned to it whose owner is gone (or none) is claimed with a
  compare-and-set on the owner key, then consumed (``on_gain``);
- a partition it owns that is now assigned to another live engine is handed
  over: it stops consuming, lets what it fetched settle, and deletes its owner
  key, so the other claims it on its next tick (``on_lose``, graceful);
- a partition whose owner key names another engine is no longer its own.

An engine killed outright (kill -9, OOM) leaves its heartbeat to lapse; an engine that
shares its process space (same boot, same PID namespace: the PID in the heartbeat means
the same process to both) and finds that PID gone does not wait for the lapse: a dead
process renews nothing. A restarted engine so takes its predecessor's partitions on its
first tick instead of ``LEASE_TTL`` seconds later.

Leases are hints; the expected-sequence append is the fence. An engine that
could not renew for longer than the TTL (paused, or cut off from NATS) may
have been replaced: it steps down from every partition at once, says why,
and starts over from the assignment: a partition whose owner key still names
it (no one took it meanwhile) it claims back. Until it has, ``holds()`` is
false, so what its fetch loops bring in goes back instead of being handled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from dagnats.domain.events import format_timestamp
from dagnats.domain.partition import assignment

from ..wire.names import ENGINES_BUCKET, OWNERS_BUCKET
from ..wire.reading import kv_entries
from .streams import LEASE_TTL, patiently

log = logging.getLogger("dagnats.leases")

RENEW_EVERY = 2.0


class Heartbeat(msgspec.Struct, frozen=True, omit_defaults=True):
    engine: str
    pid: int = 0
    host: str = ""
    started_at: str = ""
    renewed_at: str = ""
    partitions: tuple[int, ...] = ()
    # Where ``pid`` names this process: boot id and PID namespace ("" where unknown).
    space: str = ""


_HEARTBEAT = msgspec.json.Decoder(Heartbeat)


def process_space() -> str:
    """This process's boot id and PID namespace, on Linux; "" elsewhere (never matched)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def gone(beat: Heartbeat, space: str) -> bool:
    """Whether ``beat`` is from a process of this process space that no longer exists."""
    if not space or beat.space != space or beat.pid <= 0 or beat.pid == os.getpid():
        return False
    try:
        os.kill(beat.pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process): not known to be gone
    return False


def owner_key(partition: int) -> str:
    return f"p{partition}"


class PartitionLeases:
    def __init__(
        self,
        js: JetStreamContext,
        engine_id: str,
        partitions: int,
        on_gain: Callable[[int, str | None], Awaitable[None]],
        on_lose: Callable[[int, bool], Awaitable[None]],
        *,
        ttl: float = LEASE_TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self.js, self.engine_id, self.partitions = js, engine_id, partitions
        self.on_gain, self.on_lose = on_gain, on_lose
        self.ttl, self.renew_every = ttl, renew_every
        self.owned: dict[int, int] = {}  # partition -> revision of its owner key
        self.renewed = 0.0  # monotonic time of the last renewal the server took
        self.started_at = format_timestamp(datetime.now(UTC))
        self.space = process_space()
        self._task: asyncio.Task | None = None
        self._engines: KeyValue | None = None
        self._owners: KeyValue | None = None

    async def start(self) -> None:
        """Join: a first tick now (if JetStream answers; an electing cluster may not, and
        the next ticks carry on), then one every ``renew_every`` seconds."""
        self._engines = await patiently(self.js.key_value, ENGINES_BUCKET)
        self._owners = await patiently(self.js.key_value, OWNERS_BUCKET)
        try:
            await self.tick()
        except Exception as err:  # noqa: BLE001 - retried by the loop
            log.warning("partition leases, first tick: %s", err)
        self._task = asyncio.create_task(self._loop(), name="engine-leases")

    async def stop(self) -> None:
        """Hand every partition back and leave: the others take over on their next tick."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for partition in sorted(self.owned):
            await self._release(partition, graceful=True)
        try:
            await self._kv_engines().delete(self.engine_id)
        except Exception as err:  # noqa: BLE001 - the heartbeat lapses by itself
            log.debug("could not delete the heartbeat of %s: %s", self.engine_id, err)

    def holds(self, partition: int) -> bool:
        """Whether this engine may handle ``partition``'s facts now (owned, lease fresh)."""
        return partition in self.owned and time.monotonic() - self.renewed < self.ttl

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS away or electing: try again next tick
                log.warning("partition leases: %s", err)

    async def tick(self) -> None:
        """Renew, step down if the lease lapsed meanwhile, then move towards the assignment."""
        if self.owned and self.renewed and time.monotonic() - self.renewed > self.ttl:
            lapsed = time.monotonic() - self.renewed
            log.warning(
                "engine %s: no lease renewal for %.1f s (paused, or cut off from NATS): another engine may own "
                "its partitions now; stepping down from %s",
                self.engine_id,
                lapsed,
                sorted(self.owned),
            )
            for partition in sorted(self.owned):
                await self._drop(partition, graceful=False)
        await self._renew()
        live = await self._live()
        owners = {key: value.decode() for key, value in await kv_entries(self.js, OWNERS_BUCKET, ">")}
        target = assignment(self.partitions, live)
        for partition in range(self.partitions):
            owner = owners.get(owner_key(partition)) or None
            mine = partition in self.owned
            if mine and owner != self.engine_id:
                log.warning("engine %s: partition %d was taken over by %s", self.engine_id, partition, owner)
                await self._drop(partition, graceful=False)
            elif mine and target[partition] != self.engine_id:
                await self._release(partition, graceful=True)
            elif not mine and target[partition] == self.engine_id and self._claimable(owner, live):
                await self._claim(partition, owner)
        await self._renew()  # the partitions owned now, for `dagnats status`

    def _claimable(self, owner: str | None, live: set[str]) -> bool:
        """Whether a partition assigned to this engine and not held by it may be claimed: no
        owner, an owner whose heartbeat lapsed, or this engine itself (it stepped down and
        no one took the partition meanwhile: its owner key still names it)."""
        return owner is None or owner not in live or owner == self.engine_id

    async def _live(self) -> set[str]:
        """The engines whose heartbeat lives, less those known to be dead (``gone``)."""
        live = {self.engine_id}
        for key, value in await kv_entries(self.js, ENGINES_BUCKET, ">"):
            try:
                beat = _HEARTBEAT.decode(value)
            except msgspec.DecodeError:
                live.add(key)
                continue
            if not gone(beat, self.space):
                live.add(key)
                continue
            log.info("engine %s (pid %d on this machine) is gone: not waiting for its lease to lapse", key, beat.pid)
            try:
                await self._kv_engines().delete(key)
            except Exception as err:  # noqa: BLE001 - it lapses by itself
                log.debug("could not delete the heartbeat of %s: %s", key, err)
        return live

    async def _renew(self) -> None:
        beat = Heartbeat(
            engine=self.engine_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=self.started_at,
            renewed_at=format_timestamp(datetime.now(UTC)),
            partitions=tuple(sorted(self.owned)),
            space=self.space,
        )
        before = time.monotonic()
        await self._kv_engines().put(self.engine_id, msgspec.json.encode(beat))
        self.renewed = before

    async def _claim(self, partition: int, previous: str | None) -> None:
        key = owner_key(partition)
        owners = self._kv_owners()
        try:
            try:
                entry = await owners.get(key)
                revision = await owners.update(key, self.engine_id.encode(), last=entry.revision)
            except KeyNotFoundError:
                revision = await owners.create(key, self.engine_id.encode())
        except KeyWrongLastSequenceError:
            return  # another engine claimed it first: the next tick sees who
        self.owned[partition] = revision
        if previous == self.engine_id:
            log.info("engine %s: took partition %d back after stepping down", self.engine_id, partition)
        elif previous is not None:
            log.info(
                "engine %s: took over partition %d from %s (heartbeat lapsed)", self.engine_id, partition, previous
            )
        await self.on_gain(partition, previous)

    async def _release(self, partition: int, graceful: bool) -> None:
        revision = self.owned.get(partition)
        await self._drop(partition, graceful)
        if revision is None:
            return
        try:
            await self._kv_owners().delete(owner_key(partition), last=revision)
        except Exception as err:  # noqa: BLE001 - someone else moved it already, or NATS is away
            log.debug("releasing partition %d: %s", partition, err)

    async def _drop(self, partition: int, graceful: bool) -> None:
        if self.owned.pop(partition, None) is not None:
            await self.on_lose(partition, graceful)

    def _kv_engines(self) -> KeyValue:
        assert self._engines is not None, "start() first"
        return self._engines

    def _kv_owners(self) -> KeyValue:
        assert self._owners is not None, "start() first"
        return self._owners


async def heartbeats(js: JetStreamContext) -> list[Heartbeat]:
    """Every live engine's last heartbeat."""
    return [_HEARTBEAT.decode(value) for _, value in await kv_entries(js, ENGINES_BUCKET, ">")]


async def owners(js: JetStreamContext) -> dict[int, str]:
    """Each owned partition's owner (as its key says; valid while that engine's heartbeat lives)."""
    found = {}
    for key, value in await kv_entries(js, OWNERS_BUCKET, ">"):
        if key.startswith("p") and key[1:].isdigit() and value:
            found[int(key[1:])] = value.decode()
    return found
