"""The control plane: request/reply on ``dagnats.api.<op>``, served by the engine.

Each handler takes a JSON object and returns a JSON value; a DagnatsError
becomes ``{"error": message, "kind": class name}`` so the client can raise
the same class. Workers and the API never write history: starting or
cancelling a run publishes a fact to the run's inbox.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import jsonschema
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError, ServiceUnavailableError

from dagnats.domain import events as ev
from dagnats.domain.definition import workflow_from_object, workflow_to_object
from dagnats.domain.errors import (
    DagnatsError,
    InvalidInput,
    InvalidRunState,
    PayloadTooLarge,
    RunNotFound,
    UnsupportedStepType,
)
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.decide import unsupported_step_type
from dagnats.domain.definition import EXECUTED_STEP_TYPES, WorkflowDef
from dagnats.domain.fold import fold
from dagnats.domain.state import RUN_PAUSED, RUN_PAUSING, RUN_PENDING, RUN_RUNNING, WorkflowRun, new_run
from dagnats.domain.validate import validate

from .engine import Engine
from .headers import MSG_ID, TRACEPARENT
from .admission import Admission
from .correlator import Correlator
from .definitions import Definitions
from .resources import INBOX_STREAM, SIGNALS_BUCKET, inbox_subject
from .tracing import api_span
from .views import event_view, inspect_view, run_summary, run_view

log = logging.getLogger("dagnats.api")

API_PREFIX = "dagnats.api"
API_QUEUE = "dagnats-api"
# Room kept for headers and the event envelope around the input.
ENVELOPE_ROOM = 4096
MAX_CONCURRENT_REQUESTS = 256

_JSON = msgspec.json.Encoder()
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlPlane:
    def __init__(self, nc: NATS, engine: Engine) -> None:
        self.nc, self.engine = nc, engine
        self.js = nc.jetstream()
        self.handlers: dict[str, Handler] = {
            "workflow.register": self.register_workflow,
            "workflow.list": self.list_workflows,
            "workflow.get": self.get_workflow,
            "workflow.delete": self.delete_workflow,
            "run.start": self.start_run,
            "run.get": self.get_run,
            "run.inspect": self.inspect_run,
            "run.events": self.run_events,
            "run.list": self.list_runs,
            "run.cancel": self.cancel_run,
            "run.pause": self.pause_run,
            "run.resume": self.resume_run,
            "run.delete": self.delete_run,
            "run.signal": self.signal_run,
            "status": self.status,
        }

    async def start(self) -> None:
        self.defs = Definitions(self.js)
        await self.defs.start()
        self.signals = await self.js.key_value(SIGNALS_BUCKET)
        self.admission = Admission(self.js)
        await self.admission.open()
        self.correlator = Correlator(self.js, self.status_of, self.cancel_by)
        await self.correlator.start()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._inflight: set[asyncio.Task] = set()
        self._sub = await self.nc.subscribe(f"{API_PREFIX}.>", queue=API_QUEUE, cb=self._accept)

    async def stop(self) -> None:
        await self._sub.unsubscribe()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=5)
        await self.correlator.stop()
        await self.defs.stop()

    async def _accept(self, msg: Msg) -> None:
        # nats-py runs one callback at a time per subscription: serve each request
        # in its own task so a start waiting on its fsync does not hold up the next.
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(msg))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _serve(self, msg: Msg) -> None:
        op = msg.subject[len(API_PREFIX) + 1 :]
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise DagnatsError(f"unknown operation {op!r}")
            body = msgspec.json.decode(msg.data) if msg.data else {}
            if not isinstance(body, dict):
                raise DagnatsError("request body must be a JSON object")
            reply: Any = {"result": await handler(body)}
        except DagnatsError as err:
            reply = {"error": str(err), "kind": type(err).__name__}
        except msgspec.DecodeError as err:
            reply = {"error": f"request is not valid JSON: {err}", "kind": "DagnatsError"}
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as err:
            # JetStream is busy or electing a leader (a node lost): worth asking again.
            reply = {"error": f"NATS did not answer in time ({err.__class__.__name__}); try again",
                     "kind": "Unavailable"}
        except Exception as err:  # never leave a caller hanging
            log.exception("api %s failed", op)
            reply = {"error": f"internal error: {err}", "kind": "DagnatsError"}
        if msg.reply:
            await msg.respond(_JSON.encode(reply))

    # ---- workflows ----------------------------------------------------------------

    async def register_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        wf = validate(workflow_from_object(body.get("definition"), "definition"))
        action = "updated" if await self.defs.exists(wf.name) else "created"
        await self.defs.put(wf)
        return {"name": wf.name, "action": action, "steps": len(wf.steps)}

    async def list_workflows(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [workflow_to_object(d) for d in await self.defs.all()]

    async def get_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        return workflow_to_object(await self.defs.get(_name(body)))

    async def delete_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body)
        await self.defs.delete(name)
        return {"name": name, "deleted": True}

    # ---- runs -------------------------------------------------------------------------

    async def start_run(self, body: dict[str, Any]) -> dict[str, Any]:
        wf = await self.defs.get(_name(body, "workflow"))
        unsupported = [s for s in wf.steps if s.type not in EXECUTED_STEP_TYPES]
        if unsupported:
            raise UnsupportedStepType(wf.name, unsupported_step_type(unsupported[0]))
        data = body.get("input")
        if wf.input_schema is not None:
            _check_schema(wf.input_schema, data)
        run_id = check_identifier("run id", body.get("run_id") or secrets.token_hex(16))
        with api_span("startRun", body.get("trace_parent")) as trace_parent:
            return await self._start(wf, data, run_id, trace_parent, body.get("idempotency_key"))

    async def _start(self, wf: WorkflowDef, data: Any, run_id: str, trace_parent: str, explicit_key: Any) -> dict[str, Any]:
        now = _now()
        event = ev.Event(
            type=ev.WORKFLOW_STARTED, run_id=run_id, timestamp=ev.format_timestamp(now),
            payload={"workflow_def": workflow_to_object(wf), "input": data},
            trace_parent=trace_parent, id="workflow.started",
        )
        encoded = ev.EVENT_ENCODER.encode(event)
        limit = self.nc.max_payload - ENVELOPE_ROOM
        if len(encoded) > limit:
            raise PayloadTooLarge("run input with its definition", len(encoded), limit)
        existing, claimed = await self.admission.claim_idempotency(wf, data, run_id, explicit_key)
        if existing:
            return {"run_id": existing, "deduplicated": True}
        try:
            replaced = await self.admission.take_singleton(wf, data, run_id, self.status_of)
            await self.admission.register_waiters(wf, data, run_id, lambda ns: _after(now, ns))
            headers = {MSG_ID: f"{run_id}.workflow.started", TRACEPARENT: trace_parent}
            await self.js.publish(inbox_subject(run_id), encoded, headers=headers)
        except BaseException:
            await self.admission.release_idempotency(claimed)
            raise
        if replaced:
            await self.cancel_by(replaced, f"replaced by run {run_id} (singleton cancel)", f"singleton.{run_id}")
        return {"run_id": run_id}

    async def status_of(self, run_id: str) -> str | None:
        try:
            return (await self._run(run_id)).status
        except RunNotFound:
            return None

    async def cancel_by(self, run_id: str, reason: str, fact_id: str) -> None:
        run = await self._run(run_id)
        if not run.is_terminal:
            await self.publish_fact(run, ev.WORKFLOW_CANCELLED, {"reason": reason}, fact_id)

    async def _run(self, run_id: str) -> WorkflowRun:
        check_identifier("run id", run_id)
        live = self.engine.live.get(run_id)
        if live is not None:
            # The actor publishes its state just after the append: fold anything newer,
            # so a reader who saw a record in the history never reads an older state.
            run, seq = live
            for _, events in await self.engine.ports.store.read_after(run_id, seq):
                for event in events:
                    run = fold(run, event)
            return run
        run = await self._recorded(run_id)
        # Not recorded yet: its start may wait in the inbox, or have just moved from
        # there to the history (recorded before the inbox message is acked).
        run = run or await self._accepted(run_id) or await self._recorded(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def _recorded(self, run_id: str) -> WorkflowRun | None:
        run, _ = await self.engine.ports.store.load(run_id)
        return run if run is not None and run.definition is not None else None

    async def _accepted(self, run_id: str) -> WorkflowRun | None:
        """A run whose start request waits in its inbox: shown as pending."""
        try:
            msg = await self.js.get_msg(INBOX_STREAM, seq=1, subject=inbox_subject(run_id), next=True)
        except NotFoundError:
            return None
        event = ev.EVENT_DECODER.decode(msg.data)
        if event.type != ev.WORKFLOW_STARTED:
            return None
        run = fold(new_run(run_id), event)
        return msgspec.structs.replace(run, status=RUN_PENDING) if run.definition else None

    async def get_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return run_view(await self._run(str(body.get("run_id", ""))))

    async def inspect_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return inspect_view(await self._run(str(body.get("run_id", ""))))

    async def run_events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        run_id = check_identifier("run id", str(body.get("run_id", "")))
        events = await self.engine.ports.store.events(run_id)
        if not events:
            raise RunNotFound(run_id)
        return [event_view(seq, e) for seq, e in events]

    async def list_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        runs = {s.run.run_id: s.run for s in await self.engine.ports.store.snapshots()}
        for run_id, (run, _) in list(self.engine.live.items()):
            runs[run_id] = run
        workflow, status = body.get("workflow"), body.get("status")
        chosen = [
            r for r in runs.values()
            if r.definition is not None and (not workflow or r.workflow == workflow) and (not status or r.status == status)
        ]
        chosen.sort(key=lambda r: r.created_at, reverse=True)
        limit = min(max(int(body.get("limit") or 100), 1), 10_000)
        return [run_summary(r) for r in chosen[:limit]]

    async def cancel_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(str(body.get("run_id", "")))
        if run.is_terminal:
            raise InvalidRunState(run.run_id, run.status, "cancel")
        await self.publish_fact(run, ev.WORKFLOW_CANCELLED, {"reason": body.get("reason") or "cancelled by user"},
                                f"cancel.{secrets.token_hex(4)}")
        return {"run_id": run.run_id, "cancelled": True}

    async def pause_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(str(body.get("run_id", "")))
        if run.status != RUN_RUNNING:
            raise InvalidRunState(run.run_id, run.status, "pause")
        await self.publish_fact(run, ev.WORKFLOW_PAUSE_REQUESTED, None, f"pause.{secrets.token_hex(4)}")
        return {"run_id": run.run_id, "pausing": True}

    async def resume_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(str(body.get("run_id", "")))
        if run.status not in (RUN_PAUSED, RUN_PAUSING):
            raise InvalidRunState(run.run_id, run.status, "resume")
        await self.publish_fact(run, ev.WORKFLOW_RESUMED, None, f"resume.{secrets.token_hex(4)}")
        return {"run_id": run.run_id, "resumed": True}

    async def delete_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(str(body.get("run_id", "")))
        if not run.is_terminal:
            raise InvalidRunState(run.run_id, run.status, "delete")
        await self.engine.ports.store.delete(run.run_id)
        self.engine.live.pop(run.run_id, None)
        return {"run_id": run.run_id, "deleted": True}

    async def signal_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(str(body.get("run_id", "")))
        name = check_identifier("signal name", body.get("name", ""))
        await self.signals.put(f"{run.run_id}.{name}", msgspec.json.encode(body.get("data")))
        return {"run_id": run.run_id, "signal": name, "sent": True}

    async def publish_fact(self, run: WorkflowRun, event_type: str, payload: Any, fact_id: str) -> None:
        event = ev.Event(type=event_type, run_id=run.run_id, timestamp=ev.format_timestamp(_now()),
                         payload=payload, trace_parent=run.trace_parent, id=fact_id)
        headers = {MSG_ID: f"{run.run_id}.{fact_id}"}
        await self.js.publish(inbox_subject(run.run_id), ev.EVENT_ENCODER.encode(event), headers=headers)

    # ---- status ------------------------------------------------------------------------

    async def status(self, body: dict[str, Any]) -> dict[str, Any]:
        streams = {}
        for info in await self.js.streams_info():
            streams[info.config.name] = {"messages": info.state.messages, "bytes": info.state.bytes}
        active = [r for r, _ in self.engine.live.values() if not r.is_terminal]
        return {
            "nats": {"connected": self.nc.is_connected, "url": self.nc.connected_url.geturl() if self.nc.connected_url else None,
                     "server_version": _version(self.nc) if self.nc.is_connected else None,
                     "max_payload": self.nc.max_payload},
            "jetstream": {"streams": streams},
            "engine": {"live_runs": len(self.engine.live), "active_runs": len(active)},
        }


def _version(nc: NATS) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


def _name(body: dict[str, Any], key: str = "name") -> str:
    return check_identifier("workflow name", body.get(key, ""))


def _check_schema(schema: dict[str, Any], data: Any) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        raise InvalidInput(f"{err.message}" + (f" (at {where})" if where else "")) from None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _after(moment: datetime, ns: int) -> str:
    return ev.format_timestamp(moment + timedelta(microseconds=ns // 1000))
