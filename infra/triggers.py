"""Triggers: runs started by a clock (cron), a webhook, a message on a NATS subject, or an HTTP request.

Each trigger (domain/triggers.py) is one record in the ``triggers`` KV bucket
(key = its id), written by ``dagnats trigger create``, ``POST /triggers`` or
the registration of a workflow that declares it. Every engine runs a
``TriggerService`` that rereads the bucket every ``RELOAD`` seconds:

- cron: when an occurrence is due, the engine starts a run whose id is a
  hash of (trigger, occurrence). Every engine does so, and the control
  plane answers a start with a run id already taken by that run: one run per
  occurrence however many engines fire it. The last occurrence fired is kept
  in the record's state key; an occurrence missed while no engine ran is
  made up once after a restart if it fell within ``CATCH_UP`` (one hour);
  older ones are skipped, not replayed.
- subject: a core NATS subscription in the queue group ``dagnats-triggers``
  (one engine gets each message); each message starts one run.
- webhook: ``POST /hooks/<path>`` (http/triggers.py), with an optional
  HMAC-SHA256 ``X-Signature-256`` check.
- http: ``/api/<route>`` (http/request_triggers.py), answered by the run's
  respond step.
- debounce (webhook, subject): a fire is counted into its burst instead of
  starting a run; each tick starts the bursts that are due (debouncer.py).

The run's input is an envelope: ``{"trigger": kind, "source": id,
"workflow_id", "timestamp", "data"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from dagnats.domain.debounce import Burst
from dagnats.domain.errors import DagnatsError, InvalidRequest
from dagnats.domain.events import format_timestamp, parse_timestamp
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.run_context import run_context
from dagnats.domain.schedules import next_occurrence
from dagnats.domain.triggers import Cron, Subject, Trigger, Webhook, check_trigger, route_conflicts

__all__ = ["Cron", "Subject", "Trigger", "Webhook", "check_trigger", "TriggerStore", "TriggerService"]

from .debouncer import Debouncer, burst_envelope_extra
from .wire.names import TRIGGERS_BUCKET
from .wire.reading import kv_entries

log = logging.getLogger("dagnats.triggers")

STATE_PREFIX = "state-"  # key of a cron trigger's last fired occurrence
RELOAD = 1.0
CATCH_UP = timedelta(hours=1)
QUEUE = "dagnats-triggers"
MAX_TRIGGERS = 500


def envelope(t: Trigger, kind: str, data: Any = None, at: datetime | None = None) -> dict[str, Any]:
    return {
        "trigger": kind,
        "source": t.id,
        "workflow_id": t.workflow,
        "timestamp": format_timestamp(at or datetime.now(UTC)),
        "data": data,
    }


def occurrence_run_id(trigger_id: str, due: datetime) -> str:
    """The one run id of a cron occurrence: the same in every engine."""
    return hashlib.sha256(f"{trigger_id}.{int(due.timestamp())}".encode()).hexdigest()[:32]


class TriggerStore:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: Any = None
        self._recent: tuple[float, list[Trigger]] | None = None

    async def kv(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(TRIGGERS_BUCKET)
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(bucket=TRIGGERS_BUCKET, history=1)
        return self._kv

    async def all(self) -> list[Trigger]:
        await self.kv()
        found = []
        for key, value in await kv_entries(self.js, TRIGGERS_BUCKET, ">"):
            if key.startswith(STATE_PREFIX):
                continue
            with contextlib.suppress(msgspec.DecodeError):
                found.append(msgspec.json.decode(value, type=Trigger))
        return sorted(found, key=lambda t: t.id)

    async def recent(self, fresh: bool = False) -> list[Trigger]:
        """``all()`` as read at most RELOAD seconds ago (now, with ``fresh``): for lookups on
        every request, which fall back to a fresh read when they find nothing."""
        now = asyncio.get_running_loop().time()
        if fresh or self._recent is None or now - self._recent[0] > RELOAD:
            self._recent = (now, await self.all())
        return self._recent[1]

    async def get(self, trigger_id: str) -> Trigger:
        kv = await self.kv()
        try:
            entry = await kv.get(check_identifier("trigger id", trigger_id))
        except (KeyNotFoundError, NotFoundError):
            raise TriggerNotFound(trigger_id) from None
        return msgspec.json.decode(entry.value or b"", type=Trigger)

    async def put(self, t: Trigger) -> Trigger:
        await self.put_all([check_trigger(t)])
        return await self.get(t.id)

    async def put_all(self, triggers: list[Trigger], replacing: str = "") -> None:
        """Write ``triggers`` (each checked) after refusing the lot if one's route is taken
        by another trigger; with ``replacing`` (a workflow), its declared triggers that are
        not in ``triggers`` go."""
        current = await self.all()
        stale = await self.check_routes(triggers, replacing, current)
        kv = await self.kv()
        stamp = format_timestamp(datetime.now(UTC))
        kept = {o.id: o for o in current}
        for t in triggers:
            created = t.created_at or (kept[t.id].created_at if t.id in kept else stamp)
            await kv.put(t.id, msgspec.json.encode(msgspec.structs.replace(t, created_at=created)))
        for o in stale:
            await self.delete(o.id)

    async def check_routes(
        self, triggers: list[Trigger], replacing: str = "", current: list[Trigger] | None = None
    ) -> list[Trigger]:
        """InvalidRequest if ``triggers`` cannot be written (a route another trigger holds,
        too many triggers); else the declared triggers of ``replacing`` they leave out."""
        for t in triggers:
            check_trigger(t)
        ids = {t.id for t in triggers}
        others = [o for o in (await self.all() if current is None else current) if o.id not in ids]
        stale = [o for o in others if replacing and o.declared and o.workflow == replacing]
        others = [o for o in others if o not in stale]
        if len(others) + len(triggers) > MAX_TRIGGERS:
            raise InvalidRequest("trigger", f"at most {MAX_TRIGGERS} triggers")
        conflicts = route_conflicts(triggers, others)
        if conflicts:
            raise InvalidRequest("trigger", "; ".join(conflicts))
        return stale

    async def set_enabled(self, trigger_id: str, enabled: bool) -> Trigger:
        t = await self.get(trigger_id)
        return await self.put(msgspec.structs.replace(t, enabled=enabled))

    async def delete(self, trigger_id: str) -> None:
        await self.get(trigger_id)
        kv = await self.kv()
        await kv.delete(trigger_id)
        with contextlib.suppress(Exception):
            await kv.delete(STATE_PREFIX + trigger_id)

    async def last_fired(self, trigger_id: str) -> datetime | None:
        try:
            entry = await (await self.kv()).get(STATE_PREFIX + trigger_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        return parse_timestamp((entry.value or b"").decode()) if entry.value else None

    async def record_fired(self, trigger_id: str, due: datetime) -> None:
        await (await self.kv()).put(STATE_PREFIX + trigger_id, format_timestamp(due).encode())


class TriggerNotFound(DagnatsError, LookupError):
    def __init__(self, trigger_id: str) -> None:
        self.trigger_id = trigger_id
        super().__init__(f"no trigger {trigger_id!r}")


Start = Callable[..., Awaitable[Any]]


class TriggerService:
    """Fires cron triggers and listens on subject triggers; see the module docstring."""

    def __init__(self, nc: Any, start: Start) -> None:
        self.nc, self.start_run = nc, start
        self.store = TriggerStore(nc.jetstream())
        self.debouncer = Debouncer(nc.jetstream(), self._start_burst)
        self._subs: dict[str, Any] = {}  # trigger id -> subscription
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.kv()
        self._task = asyncio.create_task(self._loop(), name="triggers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick(datetime.now(UTC))
            except Exception as err:  # noqa: BLE001 - NATS busy: try again next tick
                log.warning("trigger tick failed: %s", err)
            await asyncio.sleep(RELOAD)

    async def tick(self, now: datetime) -> None:
        triggers = [t for t in await self.store.all() if t.enabled]
        await self._listen([t for t in triggers if t.subject])
        for t in triggers:
            if t.cron is not None:
                await self._cron(t, now)
        await self.debouncer.fire_due({t.id: t for t in triggers}, now)

    async def _cron(self, t: Trigger, now: datetime) -> None:
        assert t.cron is not None
        last = await self.store.last_fired(t.id)
        since = max(last or parse_timestamp(t.created_at), now - CATCH_UP)
        due = next_occurrence(t.cron.expression, since, t.cron.timezone)
        if due > now:
            return
        # Several missed occurrences: only the latest within CATCH_UP is made up.
        while (following := next_occurrence(t.cron.expression, due, t.cron.timezone)) <= now:
            due = following
        await self.fire(t, "cron", None, run_id=occurrence_run_id(t.id, due), at=due)
        await self.store.record_fired(t.id, due)

    async def fire(self, t: Trigger, kind: str, data: Any, run_id: str | None = None, at: datetime | None = None):
        if t.debounce is not None:
            key = await self.debouncer.add(t, data, at or datetime.now(UTC))
            return {"debounced": key}
        started = await self.start_run(workflow=t.workflow, input=envelope(t, kind, data, at), run_id=run_id)
        with run_context(started["run_id"]):
            log.info("trigger %s (%s) started run %s", t.id, kind, started["run_id"])
        return started

    async def _start_burst(self, t: Trigger, burst: Burst, run_id: str) -> Any:
        # Deterministic (no "now" in it): every engine that fires this burst asks for the same run.
        at = parse_timestamp(burst.last_at)
        data = envelope(t, t.kind, burst.data, at) | {"debounce": burst_envelope_extra(burst)}
        started = await self.start_run(workflow=t.workflow, input=data, run_id=run_id)
        with run_context(started["run_id"]):
            log.info("trigger %s started run %s for %d debounced fires", t.id, started["run_id"], burst.fires)
        return started

    async def _listen(self, wanted: list[Trigger]) -> None:
        keys = {f"{t.id}:{t.subject.subject}": t for t in wanted if t.subject}
        for key in set(self._subs) - set(keys):
            with contextlib.suppress(Exception):
                await self._subs.pop(key).unsubscribe()
        for key in set(keys) - set(self._subs):
            t = keys[key]
            assert t.subject is not None
            self._subs[key] = await self.nc.subscribe(t.subject.subject, queue=QUEUE, cb=self._on_message(t))

    def _on_message(self, t: Trigger) -> Callable[[Any], Awaitable[None]]:
        async def on_message(msg: Any) -> None:
            try:
                data = msgspec.json.decode(msg.data) if msg.data else None
            except msgspec.DecodeError:
                data = msg.data.decode("utf-8", "replace")
            try:
                await self.fire(t, "subject", {"subject": msg.subject, "body": data})
            except DagnatsError as err:
                log.warning("subject trigger %s could not start a run: %s", t.id, err)

        return on_message


def start_with(plane: Any) -> Start:
    """A ``start(workflow=, input=, run_id=)`` that calls the control plane in-process."""
    from .wire.control import StartRun

    async def start(**fields: Any) -> Any:
        return await plane.start_run(msgspec.convert(fields, StartRun))

    return start
