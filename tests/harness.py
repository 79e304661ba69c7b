"""An in-process engine on a real nats-server, and a hand-driven worker.

``EngineHarness`` runs the Engine and ControlPlane on the test's loop; the
``FakeWorker`` pulls tasks and reports facts exactly as the worker SDK does,
so engine tests control timing (and misbehaviour) step by step.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
from nats.js import api

from dagnats.domain.errors import Unavailable
from dagnats.domain.events import TaskPayload, fact_id, format_timestamp, make_event
from dagnats.infra.client import Client
from dagnats.infra.engine import Engine
from dagnats.infra.engine.control import ControlPlane
from dagnats.infra.wire.names import TASK_STREAM
from dagnats.infra.wire.subjects import inbox_subject


class EngineHarness:
    def __init__(
        self, url: str, max_live: int = 512, replicas: int = 1, quarantine_retry: float = 30.0, clock: Any = None
    ) -> None:
        self.url, self.max_live, self.replicas = url, max_live, replicas
        self.quarantine_retry, self.clock = quarantine_retry, clock

    async def __aenter__(self) -> EngineHarness:
        self.nc = await nats.connect(self.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        self.engine = Engine(
            self.nc,
            max_live=self.max_live,
            replicas=self.replicas,
            quarantine_retry=self.quarantine_retry,
            clock=self.clock,
        )
        await self.engine.start()
        self.api = ControlPlane(self.nc, self.engine)
        await self.api.start()
        self.client = await Client(self.url).connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.api.stop()
        await self.engine.stop()
        await self.nc.close()

    async def wait_status(self, run_id: str, statuses: set[str] | str, timeout: float = 10.0) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            run = await self._status(run_id, deadline)
            if run["status"] in wanted:
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} stayed {run['status']}, wanted {wanted}: {run}")
            await asyncio.sleep(0.02)

    async def wait_step(self, run_id: str, step_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            run = await self._status(run_id, deadline)
            if run["steps"][step_id]["status"] == status:
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"step {step_id} stayed {run['steps'][step_id]['status']}, wanted {status}")
            await asyncio.sleep(0.02)

    async def _status(self, run_id: str, deadline: float) -> dict[str, Any]:
        """The run's status, asked again while the engine cannot answer (a node lost)."""
        while True:
            try:
                return await self.client.status(run_id)
            except Unavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)


class FakeWorker:
    """Pulls tasks of one task name and reports facts by hand."""

    def __init__(self, nc: nats.NATS, task: str) -> None:
        self.nc, self.task = nc, task
        self.js = nc.jetstream()
        self.sub = None

    async def next(self, timeout: float = 5.0) -> tuple[TaskPayload, Any]:
        if self.sub is None:
            self.sub = await self.js.pull_subscribe(
                f"task.{self.task}.*",
                durable=f"workers-{self.task}",
                stream=TASK_STREAM,
                config=api.ConsumerConfig(ack_wait=30),
            )
        msgs = await self.sub.fetch(1, timeout=timeout)
        return msgspec.json.decode(msgs[0].data, type=TaskPayload), msgs[0]

    async def report(self, task: TaskPayload, event_type: str, payload: Any = None, msg_id: str | None = None) -> None:
        event = make_event(
            type=event_type,
            run_id=task.run_id,
            step_id=task.step_id,
            attempt=task.attempt,
            timestamp=format_timestamp(datetime.now(UTC)),
            payload=payload,
            trace_parent=task.traceparent,
            worker_id="fake-worker",
            instance=task.instance,
            id=fact_id(event_type, task.step_id, task.attempt, task.instance),
        )
        headers = {"Nats-Msg-Id": msg_id or f"{task.run_id}.{event.id}"}
        await self.js.publish(inbox_subject(task.run_id), msgspec.json.encode(event), headers=headers)

    async def complete(self, output: Any, timeout: float = 5.0) -> TaskPayload:
        task, msg = await self.next(timeout)
        await self.report(task, "step.started")
        await self.report(task, "step.completed", output)
        await msg.ack()
        return task

    async def fail(self, error: str = "boom", failure_type: str = "transient", timeout: float = 5.0) -> TaskPayload:
        task, msg = await self.next(timeout)
        await self.report(task, "step.started")
        await self.report(task, "step.failed", {"error": error, "failure_type": failure_type})
        await msg.ack()
        return task


CHAIN3 = {
    "name": "chain3",
    "steps": [
        {"id": "a", "task": "ta"},
        {"id": "b", "task": "tb", "depends_on": ["a"]},
        {"id": "c", "task": "tc", "depends_on": ["b"]},
    ],
}
