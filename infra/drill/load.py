"""The drill's load, its NATS probe, and the reading of what the runs left behind.

The load starts runs of the drill workflow at a fixed rate, each with an
explicit run id (so a start retried after a lost answer cannot make a second
run) and sends each run its `drill-go` event twice (a wait registered late
still gets one; one that gets none times out and the run still completes).
The probe publishes to a stream of its own every 100 ms and records each span
during which publishing failed: the NATS unavailability window.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js import api

from dagnats.domain import errors as errs
from dagnats.domain.events import decode_record

from ..client import Client
from ..wire.names import HISTORY_STREAM
from ..wire.reading import stored_messages
from ..wire.subjects import history_subject
from .invariants import Record
from .workload import GO_EVENT, WORKFLOW

PROBE_STREAM = "DRILL_PROBE"
PROBE_SUBJECT = "drill.probe"
PROBE_EVERY = 0.1
GO_AFTER = (1.5, 5.0)
RETRY_FOR = 60.0


async def connect(url: str) -> nats.NATS:
    """A connection that reconnects for ever: a drill outlives NATS outages on purpose."""
    from ..wire.connection import server_list

    return await nats.connect(server_list(url), max_reconnect_attempts=-1, reconnect_time_wait=0.25)


async def retrying(call, what: str, within: float = RETRY_FOR) -> Any:
    """Retry a call that found NATS or the engine unavailable (a fault in progress)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except (errs.Unavailable, nats.errors.Error, TimeoutError) as err:
            if time.monotonic() > deadline:
                raise errs.Unavailable(f"{what}: still failing after {within:g} s ({err!r})") from None
            await asyncio.sleep(0.25)


@dataclass
class Load:
    """Starts `count` runs at `rate` per second; `started` lists the acknowledged ones."""

    client: Client
    prefix: str
    count: int
    rate: float
    poison: int = 0
    started: list[str] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    began_at: float = 0.0
    _events: list[asyncio.Task] = field(default_factory=list)

    async def run(self) -> None:
        self.began_at = time.time()
        # Poison runs go in among the first runs, so the others run beside them.
        poison_at = {max(1, self.count // (self.poison + 1)) * (k + 1) for k in range(self.poison)}
        for i in range(self.count + self.poison):
            due = self.began_at + i / self.rate
            await asyncio.sleep(max(0.0, due - time.time()))
            poison = i in poison_at and len(self.poisoned) < self.poison
            run_id = f"{'poison' if poison else 'run'}-{self.prefix}-{i:04d}"
            await retrying(lambda r=run_id: self._start(r), f"starting {run_id}")
            self.started.append(run_id)
            if poison:
                self.poisoned.add(run_id)
            self._events.append(asyncio.create_task(self._go(run_id)))

    async def _start(self, run_id: str) -> None:
        try:
            await self.client.start(WORKFLOW, {"key": run_id}, run_id=run_id)
        except errs.RunAlreadyStarted:
            pass  # our own earlier try got through: the same run

    async def _go(self, run_id: str) -> None:
        for delay in GO_AFTER:
            await asyncio.sleep(delay)
            try:
                await retrying(lambda: self.client.publish_event(GO_EVENT, {"key": run_id}), "go event", 20)
            except errs.Unavailable:
                pass  # the wait times out instead: the run still completes

    async def settle(self) -> None:
        await asyncio.gather(*self._events, return_exceptions=True)


@dataclass
class Probe:
    """Publishes to its own stream every 100 ms; records (first failure, next success) spans."""

    nc: nats.NATS
    replicas: int
    failures: list[tuple[float, float]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def setup(self) -> None:
        js = self.nc.jetstream()
        config = api.StreamConfig(
            name=PROBE_STREAM, subjects=[PROBE_SUBJECT], num_replicas=self.replicas, max_msgs=1000
        )

        async def create() -> None:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)

        await retrying(create, "creating the probe stream")

    async def run(self) -> None:
        js = self.nc.jetstream()
        failed_since: float | None = None
        while not self._stop.is_set():
            tried_at = time.time()
            try:
                await js.publish(PROBE_SUBJECT, b"probe", timeout=1.0)
            except Exception:  # noqa: BLE001 - any failure is unavailability, which is what we measure
                failed_since = failed_since or tried_at
            else:
                if failed_since is not None:
                    self.failures.append((failed_since, time.time()))
                    failed_since = None
            await asyncio.sleep(PROBE_EVERY)
        if failed_since is not None:
            self.failures.append((failed_since, time.time()))

    def stop(self) -> None:
        self._stop.set()

    async def remove(self) -> None:
        try:
            await self.nc.jetstream().delete_stream(PROBE_STREAM)
        except Exception:  # noqa: BLE001 - best effort: the stream is tiny
            pass


async def wait_terminal(client: Client, runs: list[str], skip: set[str], deadline: float) -> dict[str, str]:
    """Poll each unfinished run's status until all are terminal or the deadline passes."""
    statuses: dict[str, str] = {}
    pending = [r for r in runs if r not in skip]
    while pending and time.monotonic() < deadline:
        still = []
        for run_id in pending:
            try:
                view = await client.status(run_id)
            except (errs.DagnatsError, nats.errors.Error, TimeoutError):
                still.append(run_id)
                continue
            statuses[run_id] = view["status"]
            if view["status"] not in TERMINAL:
                still.append(run_id)
        pending = still
        if pending:
            await asyncio.sleep(1.0)
    return statuses


TERMINAL = {"completed", "failed", "cancelled", "compensated", "compensate_failed"}


async def statuses_of(client: Client, runs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for run_id in runs:
        try:
            found[run_id] = (await retrying(lambda r=run_id: client.status(r), "status", 10))["status"]
        except errs.DagnatsError:
            found[run_id] = ""
    return found


async def read_history(nc: nats.NATS, run_id: str) -> list[Record]:
    """Every stored record of the run, in stream order, with its message id."""
    records = []
    js = nc.jetstream()
    async for msg in stored_messages(js, HISTORY_STREAM, history_subject(run_id)):
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        try:
            records.append(Record(msg.seq or 0, msg_id, decode_record(msg.data or b"[]")))
        except Exception as err:  # noqa: BLE001 - an undecodable record is a finding, not a crash
            records.append(Record(msg.seq or 0, msg_id, None, repr(err)))
    return records
