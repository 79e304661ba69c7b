"""Python client for the control plane (async, plus a thin sync wrapper).

The CLI is built on this client; every operation is one request on
``dagnats.api.<op>`` (``wire.control``), and errors come back as the same
DagnatsError classes, with the same attributes, the engine raised. Long
answers (a run's events, lists of runs) arrive in pages the client joins.
Waiting for a run costs the server no consumer (``wire.notices``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api

from dagnats.domain import errors as errs
from dagnats.domain.definition import WorkflowDef, workflow_to_object
from dagnats.domain.events import Event, decode_record
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.state import DONE_STEP_STATUSES, LIVE_RUN_STATUSES, TERMINAL_RUN_STATUSES, StepStatus
from dagnats.domain.transitions import ENDING_EVENTS
from dagnats.domain.values import check_json_value

from .wire import control
from .wire.connection import DEFAULT_URL, nats_url, server_list
from .wire.lean import LeanRequests
from .wire.names import HISTORY_STREAM
from .wire.notices import StartedRuns, await_run, drop
from .wire.subjects import event_subject, history_subject

__all__ = ["Client", "SyncClient", "EngineUnavailable", "WaitTimeout", "DEFAULT_URL", "nats_url", "server_list"]

RemoteError = control.RemoteError


class EngineUnavailable(errs.Unavailable):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"{reason} at {url} (start one with `dagnats serve`, or set --nats-url)")


class Client:
    def __init__(self, url: str | None = None, timeout: float = 10.0) -> None:
        self.url, self.timeout = nats_url(url), timeout
        self.nc: nats.NATS | None = None
        self._requests: LeanRequests | None = None
        self._started = StartedRuns()

    async def connect(self) -> Client:
        try:
            self.nc = await nats.connect(
                server_list(self.url),
                connect_timeout=3,
                max_reconnect_attempts=3,
                allow_reconnect=True,
                reconnect_time_wait=0.5,
            )
        except Exception as err:
            raise EngineUnavailable(self.url, f"cannot connect to NATS ({err.__class__.__name__})") from None
        return self

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc else 1024 * 1024

    def _requester(self) -> LeanRequests:
        # Made for the connection in use (a caller may hand the client a connection of its own).
        assert self.nc is not None, "call connect() first"
        if self._requests is None or self._requests.nc is not self.nc:
            self._requests = LeanRequests(self.nc)
        return self._requests

    async def request(self, op: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        assert self.nc is not None, "call connect() first"
        data = msgspec.json.encode(body or {})
        if len(data) > self.max_payload:
            raise errs.PayloadTooLarge("request", len(data), self.max_payload)
        try:
            msg = await self._requester().request(control.subject(op), data, timeout=timeout or self.timeout)
        except NoRespondersError:
            raise EngineUnavailable(self.url, "no dagnats engine is answering") from None
        except NatsTimeoutError:
            raise EngineUnavailable(self.url, "the dagnats engine did not answer in time") from None
        return control.decode_reply(msg.data)

    # ---- workflows ------------------------------------------------------------------

    async def register(self, definition: WorkflowDef | dict[str, Any]) -> dict[str, Any]:
        if isinstance(definition, WorkflowDef):
            definition = workflow_to_object(definition)
        return await self.request("workflow.register", {"definition": definition})

    async def workflows(self) -> list[dict[str, Any]]:
        return await self.request("workflow.list")

    async def workflow(self, name: str) -> dict[str, Any]:
        return await self.request("workflow.get", {"name": name})

    async def delete_workflow(self, name: str) -> dict[str, Any]:
        return await self.request("workflow.delete", {"name": name})

    # ---- runs ------------------------------------------------------------------------------

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        trace_parent: str | None = None,
        idempotency_key: str | None = None,
        trace_state: str | None = None,
        baggage: str | None = None,
    ) -> str:
        """Start a run; with an idempotency key (explicit, or the workflow's dot-path into
        the input) a second start with the same key returns the first run's id. A
        ``run_id`` already taken by a different run is a RunAlreadyStarted error.

        ``trace_parent`` / ``trace_state`` / ``baggage`` (W3C headers; by default the
        caller's active OpenTelemetry context): the run continues that trace and its
        tasks carry the tracestate and baggage. A malformed value is dropped."""
        check_json_value(input, "run input")
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if run_id:
            body["run_id"] = run_id
        current = {} if trace_parent else _current_trace_context()
        trace_parent = trace_parent or current.get("traceparent")
        trace_state = trace_state or (current.get("tracestate") if trace_parent else None)
        baggage = baggage or current.get("baggage")
        for field, value in (("trace_parent", trace_parent), ("trace_state", trace_state), ("baggage", baggage)):
            if value:
                body[field] = value
        if run_id:
            return (await self.request("run.start", body))["run_id"]
        # A new run's id, made here as the engine makes one, so that its end is listened
        # for before the run exists: a ``wait`` for it then reads nothing.
        assert self.nc is not None, "call connect() first"
        body["run_id"], body["new_run"] = secrets.token_hex(16), True
        sub = await self._started.listen(self.nc, body["run_id"])
        try:
            answer = await self.request("run.start", body)
        except BaseException:
            await drop(sub)
            raise
        if answer["run_id"] == body["run_id"] and not answer.get("deduplicated"):
            self._started.started(answer["run_id"], sub)
        else:  # an earlier run with the same idempotency key: it may have ended already
            await drop(sub)
        return answer["run_id"]

    async def status(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.get", {"run_id": run_id})

    async def events(self, run_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        """The run's whole history (after ``after_seq``), page by page."""
        events: list[dict[str, Any]] = []
        async for page in self._pages("run.events", {"run_id": run_id, "after_seq": after_seq}, "after_seq"):
            events += page["events"]
        return events

    async def output(self, run_id: str) -> Any:
        return (await self.status(run_id))["output"]

    async def runs(self, workflow: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        """Runs, newest first, at most ``limit`` (asked for page by page)."""
        runs: list[dict[str, Any]] = []
        body = {"workflow": workflow, "status": status, "limit": limit}
        async for page in self._pages("run.list", body, "cursor"):
            runs += page["runs"]
            if len(runs) >= limit:
                break
            body["limit"] = limit - len(runs)
        return runs[:limit]

    async def _pages(self, op: str, body: dict[str, Any], cursor: str) -> AsyncIterator[dict[str, Any]]:
        while True:
            page = await self.request(op, body)
            yield page
            if page.get("next") is None:
                return
            body[cursor] = page["next"]

    async def cancel(self, run_id: str, reason: str | None = None, wait: float = 5.0) -> dict[str, Any]:
        """Cancel a run; the answer says how it ended (``status``), as seen within ``wait``
        seconds: a run that completed before the cancel took effect says ``completed``."""
        return await self.request(
            "run.cancel", {"run_id": run_id, "reason": reason, "wait": wait}, timeout=self.timeout + wait
        )

    async def pause(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.pause", {"run_id": run_id})

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.resume", {"run_id": run_id})

    async def inspect(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.inspect", {"run_id": run_id})

    async def limits(self, prefix: str = "", queue: int = 20) -> list[dict[str, Any]]:
        """Every rate and concurrency limit key: slots or tokens in use, its queue of
        waiting runs and steps (the first ``queue``; ``queued`` counts them all), and why
        the head of the queue waits."""
        limits: list[dict[str, Any]] = []
        async for page in self._pages("limits", {"prefix": prefix, "queue": queue}, "after"):
            limits += page["limits"]
        return limits

    async def delete(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.delete", {"run_id": run_id})

    # ---- dead letters ----------------------------------------------------------

    async def dlq_list(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        """Dead letters, oldest first: seq, task, run_id, step_id, workflow, reason, error,
        attempts, deliveries, time. ``since``/``until``: RFC3339 instants."""
        body = {"run_id": run_id, "workflow": workflow, "limit": limit, "since": since, "until": until}
        answer = await self.request("dlq.list", {k: v for k, v in body.items() if v is not None})
        return list(answer["dead_letters"])

    async def dlq_show(self, seq: int) -> dict[str, Any]:
        """One dead letter with its body (the task as it was queued)."""
        return await self.request("dlq.show", {"seq": seq})

    async def dlq_replay(
        self,
        seq: int | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        since: str | None = None,
        until: str | None = None,
        by: str = "",
    ) -> dict[str, Any]:
        """Have the run take a dead letter's step up again (``seq``), or every step with dead
        letters of a run, or of a workflow in a time range: ``{"replayed": [...], "refused":
        [...]}``. A single replay the run cannot take raises ReplayRefused with the reason."""
        if seq is not None:
            return await self.request("dlq.replay", {"seq": seq, "by": by})
        body = {"run_id": run_id, "workflow": workflow, "since": since, "until": until, "by": by}
        return await self.request("dlq.replay_many", {k: v for k, v in body.items() if v is not None})

    async def dlq_discard(self, seq: int) -> dict[str, Any]:
        return await self.request("dlq.discard", {"seq": seq})

    async def signal(self, run_id: str, name: str, data: Any = None) -> dict[str, Any]:
        check_json_value(data, "signal data")
        return await self.request("run.signal", {"run_id": run_id, "name": name, "data": data})

    async def approve(
        self, run_id: str, step_id: str, comment: str = "", *, data: Any = None, by: str = "", token: str | None = None
    ) -> dict[str, Any]:
        """Approve a step waiting for an approval: it completes with the decision (and ``data``)
        as output. A second decision, or a step not waiting, is refused."""
        check_json_value(data, "approval data")
        body = {"run_id": run_id, "step_id": step_id, "comment": comment, "data": data, "by": by, "token": token}
        return await self.request("run.approve", body)

    async def reject(
        self, run_id: str, step_id: str, reason: str = "", *, by: str = "", token: str | None = None
    ) -> dict[str, Any]:
        """Reject a step waiting for an approval: it fails, for good, with the reason."""
        body = {"run_id": run_id, "step_id": step_id, "reason": reason, "by": by, "token": token}
        return await self.request("run.reject", body)

    async def publish_event(self, name: str, data: Any = None) -> int:
        """Store an external event on ``event.<name>`` (for cancel_on and waits)."""
        assert self.nc is not None
        check_json_value(data, "event data")
        encoded = msgspec.json.encode(data)
        if len(encoded) > self.max_payload:
            raise errs.PayloadTooLarge("event data", len(encoded), self.max_payload)
        ack = await self.nc.jetstream().publish(event_subject(name), encoded)
        return ack.seq

    async def wait(self, run_id: str, step: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run (or one step) is finished; returns the run's status view.

        Costs the server one plain subscription (no JetStream consumer), however
        many runs a program waits for at once.
        """
        check_identifier("run id", run_id)
        assert self.nc is not None

        def finished(view: dict[str, Any]) -> bool:
            if step is not None and step not in view["steps"]:
                raise errs.DagnatsError(f"run {run_id} has no step {step!r}")
            return _finished(view, step)

        listening = self._started.take(run_id) if step is None else None
        try:
            return await asyncio.wait_for(
                await_run(self.nc, run_id, lambda: self.status(run_id), finished, step, listening=listening), timeout
            )
        except TimeoutError:
            raise WaitTimeout(run_id, step, timeout or 0) from None

    async def engine_status(self) -> dict[str, Any]:
        return await self.request("status")

    async def watch(self, run_id: str, idle_timeout: float | None = None) -> AsyncGenerator[Event, None]:
        """Yield the run's history events from the start until the run is terminal
        (one ordered consumer for the watch's life: for a person following a run)."""
        check_identifier("run id", run_id)
        assert self.nc is not None
        js = self.nc.jetstream()
        sub = await js.subscribe(
            history_subject(run_id),
            stream=HISTORY_STREAM,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=idle_timeout or 3600)
                for event in decode_record(msg.data):
                    yield event
                    if event.type in ENDING_EVENTS:
                        return
        finally:
            await sub.unsubscribe()


# A step waited on is finished once done or cancelled, or failed in a run that no longer moves.
_STEP_ENDED = DONE_STEP_STATUSES | {StepStatus.CANCELLED}


class WaitTimeout(errs.DagnatsError, TimeoutError):
    def __init__(self, run_id: str, step: str | None, timeout: float) -> None:
        self.run_id, self.step, self.timeout = run_id, step, timeout
        what = f"step {step} of run {run_id}" if step else f"run {run_id}"
        super().__init__(f"{what} did not finish within {timeout:g}s")


def _finished(run: dict[str, Any], step: str | None) -> bool:
    if run["status"] in TERMINAL_RUN_STATUSES:
        return True
    if step is None:
        return False
    status = run["steps"][step]["status"]
    return status in _STEP_ENDED or (status == StepStatus.FAILED and run["status"] not in LIVE_RUN_STATUSES)


class SyncClient:
    """The same operations, blocking; runs its own event loop."""

    def __init__(self, url: str | None = None, timeout: float = 10.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = Client(url, timeout)
        self._loop.run_until_complete(self._client.connect())

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        return call


def _current_trace_context() -> dict[str, str]:
    """The caller's active OpenTelemetry context (traceparent, tracestate, baggage), if any:
    the run continues its trace."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
