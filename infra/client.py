"""Python client for the control plane (async, plus a thin sync wrapper).

The CLI is built on this client; every operation is one request on
``dagnats.api.<op>``. Errors come back as the same DagnatsError classes the
engine raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, AsyncIterator

import msgspec
import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js import api as js_api

from dagnats.domain import errors as errs
from dagnats.domain.definition import WorkflowDef, workflow_to_object
from dagnats.domain.events import Event, decode_record
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.fold import fold
from dagnats.domain.state import TERMINAL_RUN_STATUSES, new_run

from .api import API_PREFIX
from .resources import HISTORY_STREAM, event_subject, history_subject
from .views import run_view

DEFAULT_URL = "nats://127.0.0.1:4222"
_ERRORS = {
    name: cls for name, cls in vars(errs).items() if isinstance(cls, type) and issubclass(cls, errs.DagnatsError)
}


class EngineUnavailable(errs.Unavailable):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"{reason} at {url} (start one with `dagnats serve`, or set --nats-url)")


class RemoteError(errs.DagnatsError):
    """An engine error whose class this client does not know."""


def nats_url(url: str | None = None) -> str:
    return url or os.environ.get("DAGNATS_NATS_URL") or DEFAULT_URL


def server_list(url: str) -> list[str]:
    """A NATS URL, or several separated by commas (the nodes of a cluster)."""
    return [part.strip() for part in url.split(",") if part.strip()]


class Client:
    def __init__(self, url: str | None = None, timeout: float = 10.0) -> None:
        self.url, self.timeout = nats_url(url), timeout
        self.nc: nats.NATS | None = None

    async def connect(self) -> "Client":
        try:
            self.nc = await nats.connect(server_list(self.url), connect_timeout=3, max_reconnect_attempts=3,
                                         allow_reconnect=True, reconnect_time_wait=0.5)
        except Exception as err:
            raise EngineUnavailable(self.url, f"cannot connect to NATS ({err.__class__.__name__})") from None
        return self

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc else 1024 * 1024

    async def request(self, op: str, body: dict[str, Any] | None = None) -> Any:
        assert self.nc is not None, "call connect() first"
        data = msgspec.json.encode(body or {})
        if len(data) > self.max_payload:
            raise errs.PayloadTooLarge("request", len(data), self.max_payload)
        try:
            msg = await self.nc.request(f"{API_PREFIX}.{op}", data, timeout=self.timeout)
        except NoRespondersError:
            raise EngineUnavailable(self.url, "no dagnats engine is answering") from None
        except NatsTimeoutError:
            raise EngineUnavailable(self.url, "the dagnats engine did not answer in time") from None
        reply = msgspec.json.decode(msg.data)
        if "error" in reply:
            raise _rebuild(_ERRORS.get(reply.get("kind", ""), RemoteError), reply["error"])
        return reply.get("result")

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

    async def start(self, workflow: str, input: Any = None, *, run_id: str | None = None,
                    trace_parent: str | None = None, idempotency_key: str | None = None) -> str:
        """Start a run; with an idempotency key (explicit, or the workflow's dot-path into
        the input) a second start with the same key returns the first run's id."""
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if run_id:
            body["run_id"] = run_id
        if trace_parent:
            body["trace_parent"] = trace_parent
        return (await self.request("run.start", body))["run_id"]

    async def status(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.get", {"run_id": run_id})

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        return await self.request("run.events", {"run_id": run_id})

    async def output(self, run_id: str) -> Any:
        return (await self.status(run_id))["output"]

    async def runs(self, workflow: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        return await self.request("run.list", {"workflow": workflow, "status": status, "limit": limit})

    async def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self.request("run.cancel", {"run_id": run_id, "reason": reason})

    async def pause(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.pause", {"run_id": run_id})

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.resume", {"run_id": run_id})

    async def inspect(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.inspect", {"run_id": run_id})

    async def delete(self, run_id: str) -> dict[str, Any]:
        return await self.request("run.delete", {"run_id": run_id})

    async def signal(self, run_id: str, name: str, data: Any = None) -> dict[str, Any]:
        return await self.request("run.signal", {"run_id": run_id, "name": name, "data": data})

    async def publish_event(self, name: str, data: Any = None) -> int:
        """Store an external event on ``event.<name>`` (for cancel_on and waits)."""
        assert self.nc is not None
        encoded = msgspec.json.encode(data)
        if len(encoded) > self.max_payload:
            raise errs.PayloadTooLarge("event data", len(encoded), self.max_payload)
        ack = await self.nc.jetstream().publish(event_subject(name), encoded)
        return ack.seq

    async def wait(self, run_id: str, step: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run (or one step) is terminal; returns the run's status view.

        Works for runs started anywhere: it follows the run's history from the start.
        """
        first = await self.status(run_id)
        if step is not None and step not in first["steps"]:
            raise errs.DagnatsError(f"run {run_id} has no step {step!r}")

        async def follow() -> dict[str, Any]:
            # Fold the history here: the state at each event, with no read racing the engine.
            state = new_run(run_id)
            async with contextlib.aclosing(self.watch(run_id)) as events:
                async for event in events:
                    state = fold(state, event)
                    view = run_view(state)
                    if _finished(view, step):
                        return view
            return run_view(state)

        try:
            return await asyncio.wait_for(follow(), timeout)
        except asyncio.TimeoutError:
            raise WaitTimeout(run_id, step, timeout or 0) from None

    async def engine_status(self) -> dict[str, Any]:
        return await self.request("status")

    async def watch(self, run_id: str, idle_timeout: float | None = None) -> AsyncIterator[Event]:
        """Yield the run's history events from the start until the run is terminal."""
        check_identifier("run id", run_id)
        assert self.nc is not None
        js = self.nc.jetstream()
        sub = await js.subscribe(history_subject(run_id), stream=HISTORY_STREAM, ordered_consumer=True,
                                 deliver_policy=js_api.DeliverPolicy.ALL)
        try:
            while True:
                msg = await sub.next_msg(timeout=idle_timeout or 3600)
                for event in decode_record(msg.data):
                    yield event
                    if event.type in _TERMINAL_EVENTS:
                        return
        finally:
            await sub.unsubscribe()


_TERMINAL_EVENTS = frozenset({
    "workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.compensated", "workflow.compensate_failed",
})
_STEP_END = frozenset({"step.completed", "step.failed", "step.skipped", "step.recovered", "workflow.cancelled"})


class WaitTimeout(errs.DagnatsError, TimeoutError):
    def __init__(self, run_id: str, step: str | None, timeout: float) -> None:
        what = f"step {step} of run {run_id}" if step else f"run {run_id}"
        super().__init__(f"{what} did not finish within {timeout:g}s")


def _finished(run: dict[str, Any], step: str | None) -> bool:
    if step is None:
        return run["status"] in TERMINAL_RUN_STATUSES
    status = run["steps"][step]["status"]
    done = status in ("completed", "skipped", "cancelled", "recovered")
    failed_for_good = status == "failed" and run["status"] not in ("running", "pausing", "paused")
    return done or failed_for_good or run["status"] in TERMINAL_RUN_STATUSES


def _rebuild(cls: type, message: str) -> errs.DagnatsError:
    """The engine's error as the same class, without re-running its constructor."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


class SyncClient:
    """The same operations, blocking; runs its own event loop."""

    def __init__(self, url: str | None = None, timeout: float = 10.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = Client(url, timeout)
        self._loop.run_until_complete(self._client.connect())

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> "SyncClient":
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
