"""The control plane: request/reply on ``dagnats.api.<op>``, served by the engine.

Each request body is decoded once into its operation's Struct
(``wire.control``); each handler returns a JSON value, and a DagnatsError
goes back as its class, message and attributes. Workers and the API never
write history: starting or cancelling a run publishes a fact to the run's
inbox. Runs are read through the engine's ``RunReader`` only.

Every reply fits in one NATS message: paged operations fill a page up to a
byte budget, and any other answer that would not fit is a ReplyTooLarge
error rather than silence.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dagnats.domain import events as ev
from dagnats.domain.actions import StartChildRun
from dagnats.domain.definition import (
    SubWorkflowConfig,
    WorkflowDef,
    workflow_from_object,
    workflow_to_object,
)
from dagnats.domain.errors import (
    DagnatsError,
    InvalidRequest,
    InvalidRunState,
    ReplyTooLarge,
    RunNotFound,
    Unavailable,
    WorkflowInvalid,
)
from dagnats.domain.identifiers import check_identifier, is_identifier
from dagnats.domain.run_context import run_context
from dagnats.domain.state import RunStatus, WorkflowRun
from dagnats.domain.triggers import declared_triggers
from dagnats.domain.validate import validate

from ..reactive.views import LISTED_STATUSES, execution_events, execution_summaries, execution_view
from ..triggers import TriggerStore
from ..wire import control as wire
from ..wire.facts import publish_fact
from ..wire.keys import signal_key
from ..wire.lean import publish_now
from ..wire.names import API_PREFIX, API_QUEUE, SIGNALS_BUCKET
from ..wire.notices import await_run
from ..wire.outage import NATS_UNAVAILABLE
from ..wire.timers import pending_timers
from ..wire.workers import live_workers
from .admission import Admission
from .approvals import decide_approval
from .cluster_view import cluster_view
from .correlator import Correlator
from .dead_letters import DeadLetters
from .definitions import Definitions
from .engine import Engine
from .limits import list_limits
from .paging import events_page, runs_page
from .reader import RunReader
from .starts import RunStarts
from .views import awaits_capabilities, fit_view, inspect_view, run_summary, run_view

log = logging.getLogger("dagnats.api")

# Room kept for headers and the event envelope around the input.
ENVELOPE_ROOM = 4096
MAX_CONCURRENT_REQUESTS = 256
MAX_CANCEL_WAIT = 30.0

Handler = Callable[[Any], Awaitable[Any]]


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
            "run.approve": lambda req: decide_approval(self.js, self.reader, req, approve=True),
            "run.reject": lambda req: decide_approval(self.js, self.reader, req, approve=False),
            "limits": self.limits,
            "status": self.status,
            "dlq.list": self.list_dead_letters,
            "dlq.show": lambda req: self.dead_letters.show(req.seq),
            "dlq.replay": lambda req: self.dead_letters.replay(req.seq, req.by),
            "dlq.replay_many": self.replay_dead_letters,
            "dlq.discard": lambda req: self.dead_letters.discard(req.seq),
        }
        assert set(self.handlers) == set(wire.OPERATIONS), "every operation of the contract has a handler"

    async def start(self) -> None:
        self.defs = Definitions(self.js)
        await self.defs.start()
        self.signals = await self.js.key_value(SIGNALS_BUCKET)
        self.admission = Admission(self.js)
        await self.admission.open()
        self.starts = RunStarts(
            self.js,
            self.defs,
            self.admission,
            self.reader,
            self.max_reply,
            self.cancel_by,
            self.engine.partition_count,
            here=self.engine.handoff.here,
        )
        self.correlator = Correlator(self.js, self.reader.status_of, self.cancel_by)
        await self.correlator.start()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._inflight: set[asyncio.Task] = set()
        self.engine.ports.outbox.start_child = self.start_child
        self.dead_letters = DeadLetters(self.js, self.reader)
        self._sub = await self.nc.subscribe(f"{API_PREFIX}.>", queue=API_QUEUE, cb=self._accept)
        # Ready means answering: the server has the subscription before anyone is told so
        # (a request sent the moment after found no responders).
        await self.nc.flush()

    async def stop(self) -> None:
        await self._sub.unsubscribe()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=5)
        await self.correlator.stop()
        await self.defs.stop()

    @property
    def reader(self) -> RunReader:
        return self.engine.reader

    @property
    def max_reply(self) -> int:
        return self.nc.max_payload - ENVELOPE_ROOM

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
        with run_context(_run_of(msg.data)):  # log lines about a run carry its id
            reply = await self._answer(op, msg)
        if msg.reply and not publish_now(self.nc, msg.reply, reply):
            await msg.respond(reply)

    async def _answer(self, op: str, msg: Msg) -> bytes:
        try:
            request = wire.decode_request(op, msg.data)
            reply = wire.encode_result(await self.handlers[op](request))
            if len(reply) > self.nc.max_payload:
                raise ReplyTooLarge(op, len(reply), self.nc.max_payload, _HINTS.get(op, ""))
        except DagnatsError as err:
            reply = wire.encode_error(err)
        except NATS_UNAVAILABLE as err:
            # JetStream is busy or electing a leader (a node lost): worth asking again.
            reply = wire.encode_error(Unavailable(f"NATS did not answer in time ({err.__class__.__name__}); try again"))
        except Exception as err:  # never leave a caller hanging
            log.exception("api %s failed", op)
            reply = wire.encode_error(DagnatsError(f"internal error: {err}"))
        return reply

    # ---- workflows ----------------------------------------------------------------

    async def register_workflow(self, req: wire.RegisterWorkflow) -> dict[str, Any]:
        wf = validate(workflow_from_object(req.definition, "definition"))
        missing = await self._unknown_children(wf)
        if missing:
            raise WorkflowInvalid(wf.name, missing)
        triggers = declared_triggers(wf.name, wf.triggers)
        store = TriggerStore(self.js)
        try:
            await store.check_routes(triggers, replacing=wf.name)
        except InvalidRequest as err:
            raise WorkflowInvalid(wf.name, [f"triggers: {err.reason}"]) from None
        action = "updated" if await self.defs.exists(wf.name) else "created"
        await self.defs.put(msgspec.structs.replace(wf, triggers=()))  # they live in the triggers KV
        await store.put_all(triggers, replacing=wf.name)
        return {"name": wf.name, "action": action, "steps": len(wf.steps), "triggers": [t.id for t in triggers]}

    async def _unknown_children(self, wf: WorkflowDef) -> list[str]:
        """sub_workflow steps naming a workflow that is not registered (itself may recurse)."""
        issues = []
        for step in wf.steps:
            config = step.parsed_config() if step.type == "sub_workflow" else None
            if (
                isinstance(config, SubWorkflowConfig)
                and config.workflow != wf.name
                and not await self.defs.exists(config.workflow)
            ):
                issues.append(f"step {step.id!r}: config.workflow: no workflow {config.workflow!r} is registered")
        return issues

    async def list_workflows(self, req: wire.Empty) -> list[dict[str, Any]]:
        return [workflow_to_object(d) for d in await self.defs.all()]

    async def get_workflow(self, req: wire.WorkflowRef) -> dict[str, Any]:
        return workflow_to_object(await self.defs.get(check_identifier("workflow name", req.name)))

    async def delete_workflow(self, req: wire.WorkflowRef) -> dict[str, Any]:
        name = check_identifier("workflow name", req.name)
        await self.defs.delete(name)
        await TriggerStore(self.js).put_all([], replacing=name)  # the triggers it declared go with it
        return {"name": name, "deleted": True}

    # ---- starting runs -------------------------------------------------------------

    async def start_run(self, req: wire.StartRun) -> dict[str, Any]:
        return await self.starts.start_run(req)

    async def start_child(self, child: StartChildRun, parent_run_id: str, trace_parent: str) -> dict[str, Any]:
        return await self.starts.start_child(child, parent_run_id, trace_parent)

    # ---- reading runs -----------------------------------------------------------------

    async def get_run(self, req: wire.RunRef) -> dict[str, Any]:
        try:
            run = await self.reader.get(req.run_id)
        except (RunNotFound, msgspec.DecodeError):  # (a reactive history does not decode as one)
            return fit_view(await self._execution(req.run_id), self.max_reply)
        return fit_view(run_view(run), self.max_reply)

    async def _execution(self, run_id: str) -> dict[str, Any]:
        """A reactive execution (infra.reactive.views), asked for once no DAG run has the id
        (the status of a DAG run, which every wait asks for, costs no extra read)."""
        if execution := await execution_view(self.js, check_identifier("run id", run_id)):
            return execution
        raise RunNotFound(run_id)

    async def inspect_run(self, req: wire.RunRef) -> dict[str, Any]:
        try:
            run = await self.reader.get(req.run_id)
        except (RunNotFound, msgspec.DecodeError):  # (a reactive history does not decode as one)
            return fit_view(await self._execution(req.run_id), self.max_reply)
        timers = [] if run.is_terminal else await pending_timers(self.js, run.run_id)
        workers = await live_workers(self.js) if awaits_capabilities(run) else []
        return fit_view(inspect_view(run, timers, workers), self.max_reply)

    async def run_events(self, req: wire.RunEvents) -> dict[str, Any]:
        check_identifier("run id", req.run_id)
        _check_page_size(req.limit, "run.events")
        if (reactive := await execution_events(self.js, req.run_id, req.after_seq, req.limit)) is not None:
            return reactive
        page = await events_page(self.reader.store, req.run_id, req.after_seq, req.limit, self.max_reply)
        if not page["events"] and req.after_seq == 0:
            await self.reader.get(req.run_id)  # RunNotFound for a run that does not exist
        return page

    async def list_runs(self, req: wire.ListRuns) -> dict[str, Any]:
        """DAG runs and reactive executions (``infra.reactive.views``), newest first."""
        _check_page_size(req.limit, "run.list")
        if req.status is not None and req.status not in LISTED_STATUSES:
            raise InvalidRequest("run.list", f"unknown status {req.status!r} (one of {', '.join(LISTED_STATUSES)})")
        since, until = _instant(req.since, "since"), _instant(req.until, "until")
        runs = {s.run.run_id: s.run for s in await self.reader.store.snapshots()}
        runs.update((r.run_id, r) for r in self.reader.live())
        summaries = [run_summary(r) for r in runs.values() if r.definition is not None]
        summaries += await execution_summaries(self.js)
        chosen = [
            s
            for s in summaries
            if (not req.workflow or s["workflow"] == req.workflow)
            and (not req.status or s["status"] == req.status)
            and _created_within(s.get("created_at"), since, until)
        ]
        return runs_page(chosen, req.cursor, req.limit, self.max_reply)

    # ---- run control --------------------------------------------------------------------

    async def cancel_run(self, req: wire.CancelRun) -> dict[str, Any]:
        run = await self.reader.get(req.run_id)
        if run.is_terminal:
            raise InvalidRunState(run.run_id, run.status, "cancel")
        await self.publish_fact(
            run,
            ev.WorkflowCancelled,
            ev.RunEnd(reason=req.reason or "cancelled by user"),
            f"cancel.{secrets.token_hex(4)}",
        )
        status = await self._status_within(run.run_id, min(max(req.wait, 0.0), MAX_CANCEL_WAIT))
        return {"run_id": run.run_id, "cancelled": status == RunStatus.CANCELLED, "status": status}

    async def _status_within(self, run_id: str, seconds: float) -> str:
        """The run's status once it has ended, or as it is after ``seconds``."""

        async def read() -> dict[str, Any]:
            return {"status": (await self.reader.get(run_id)).status}

        def ended(view: dict[str, Any]) -> bool:
            return RunStatus(view["status"]).is_terminal

        try:
            view = await asyncio.wait_for(await_run(self.nc, run_id, read, ended, recheck=0.5), seconds)
        except TimeoutError:
            view = await read()
        return str(view["status"])

    async def pause_run(self, req: wire.RunRef) -> dict[str, Any]:
        run = await self.reader.get(req.run_id)
        if run.status != RunStatus.RUNNING:
            raise InvalidRunState(run.run_id, run.status, "pause")
        await self.publish_fact(run, ev.WorkflowPauseRequested, None, f"pause.{secrets.token_hex(4)}")
        return {"run_id": run.run_id, "pausing": True}

    async def resume_run(self, req: wire.RunRef) -> dict[str, Any]:
        run = await self.reader.get(req.run_id)
        if run.status not in (RunStatus.PAUSED, RunStatus.PAUSING):
            raise InvalidRunState(run.run_id, run.status, "resume")
        await self.publish_fact(run, ev.WorkflowResumed, None, f"resume.{secrets.token_hex(4)}")
        return {"run_id": run.run_id, "resumed": True}

    async def delete_run(self, req: wire.RunRef) -> dict[str, Any]:
        run = await self.reader.get(req.run_id)
        if not run.is_terminal:
            raise InvalidRunState(run.run_id, run.status, "delete")
        await self.reader.store.delete(run.run_id)
        self.reader.forget(run.run_id, keep_ended=False)
        return {"run_id": run.run_id, "deleted": True}

    async def signal_run(self, req: wire.SignalRun) -> dict[str, Any]:
        run = await self.reader.get(req.run_id)
        name = check_identifier("signal name", req.name)
        await self.signals.put(signal_key(run.run_id, name), msgspec.json.encode(req.data))
        return {"run_id": run.run_id, "signal": name, "sent": True}

    async def cancel_by(self, run_id: str, reason: str, fact_id: str) -> None:
        run = await self.reader.get(run_id)
        if not run.is_terminal:
            await self.publish_fact(run, ev.WorkflowCancelled, ev.RunEnd(reason=reason), fact_id)

    async def publish_fact(self, run: WorkflowRun, cls: type[ev.EventBase], payload: Any, fact_id: str) -> None:
        fields = {"payload": payload} if payload is not None else {}
        event = cls(
            run_id=run.run_id,
            timestamp=ev.format_timestamp(_now()),
            trace_parent=run.trace_parent,
            id=fact_id,
            **fields,
        )
        await publish_fact(self.js, event)  # type: ignore[arg-type]

    # ---- flow control -------------------------------------------------------------------

    async def limits(self, req: wire.ListLimits) -> dict[str, Any]:
        """Every limit key: what is in use, who waits (the head of each queue), and why."""
        views = sorted(await list_limits(self.js, _now()), key=lambda v: v.key)
        shown: list[dict[str, Any]] = []
        size = 0
        for view in views:
            if not view.key.startswith(req.prefix) or view.key <= req.after:
                continue
            entry = msgspec.to_builtins(view)
            entry["queued"] = len(view.queue)
            entry["queue"] = entry.get("queue", [])[: max(0, req.queue)]
            cost = len(msgspec.json.encode(entry)) + 1
            if shown and size + cost > self.max_reply:  # a page per reply: the rest after this key
                return {"limits": shown, "next": shown[-1]["key"]}
            shown.append(entry)
            size += cost
        return {"limits": shown, "next": None}

    # ---- dead letters ------------------------------------------------------------------

    async def list_dead_letters(self, req: wire.ListDeadLetters) -> dict[str, Any]:
        _check_page_size(req.limit, "dlq.list")
        entries = await self.dead_letters.entries(req.run_id, req.workflow, req.since, req.until, req.limit)
        return {"dead_letters": entries}

    async def replay_dead_letters(self, req: wire.ReplayDeadLetters) -> dict[str, Any]:
        if bool(req.run_id) == bool(req.workflow):
            raise InvalidRequest("dlq.replay_many", "give a run_id or a workflow (with since/until), not both")
        entries = await self.dead_letters.entries(req.run_id, req.workflow, req.since, req.until, wire.MAX_PAGE)
        return await self.dead_letters.replay_many(entries, req.by)

    # ---- status ------------------------------------------------------------------------

    async def status(self, req: wire.Empty) -> dict[str, Any]:
        streams = {}
        for info in await self.js.streams_info():
            streams[info.config.name] = {"messages": info.state.messages, "bytes": info.state.bytes}
        live = self.reader.live()
        return {
            "nats": {
                "connected": self.nc.is_connected,
                "url": self.nc.connected_url.geturl() if self.nc.connected_url else None,
                "server_version": _version(self.nc) if self.nc.is_connected else None,
                "max_payload": self.nc.max_payload,
            },
            "jetstream": {"streams": streams},
            "engine": {
                "id": self.engine.engine_id,
                "live_runs": len(live),
                "active_runs": sum(1 for r in live if not r.is_terminal),
            },
            "cluster": await cluster_view(self.js, self.engine.partition_count, self.engine.engine_id),
        }


_HINTS = {
    "run.get": "large step outputs are elided from the status view; use `dagnats run events` for them",
    "run.inspect": "large step outputs are elided from the inspect view; use `dagnats run events` for them",
}


def _check_page_size(limit: int, op: str) -> None:
    if not 1 <= limit <= wire.MAX_PAGE:
        raise InvalidRequest(op, f"limit must be between 1 and {wire.MAX_PAGE}, not {limit}")


def _instant(text: str | None, name: str) -> datetime | None:
    """An RFC 3339 instant (a date alone: its midnight UTC; none or empty: no bound). A
    "+hh:mm" offset sent unencoded in a query string arrives as " hh:mm": read it back."""
    if not text:
        return None
    try:
        return ev.parse_timestamp(_UNENCODED_OFFSET.sub(r"+\1", text))
    except ValueError:
        raise InvalidRequest("run.list", f"{name} {text!r} is not an RFC3339 instant") from None


_UNENCODED_OFFSET = re.compile(r" (\d\d:\d\d)$")


def _created_within(created_at: str | None, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    if not created_at:
        return False
    created = ev.parse_timestamp(created_at)
    return (since is None or created >= since) and (until is None or created <= until)


def _version(nc: NATS) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


def _now() -> datetime:
    return datetime.now(UTC)


class _RunRef(msgspec.Struct):
    run_id: str | None = None


_RUN_REF = msgspec.json.Decoder(_RunRef)


def _run_of(data: bytes) -> str:
    """The run a request is about (``run_id``), if it names one: for its log lines."""
    try:
        run_id = _RUN_REF.decode(data).run_id
    except (msgspec.DecodeError, ValueError, RecursionError):  # the request's own decode says what is wrong
        return ""
    return run_id if isinstance(run_id, str) and is_identifier(run_id) else ""
