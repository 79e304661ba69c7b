"""Playing the engine for worker tests: tasks published by hand, facts read from the inbox.

``publish_task`` puts a TaskPayload on ``task.<task>.<run>`` as the engine
would; ``Inbox`` reads the facts a worker reports to ``inbox.<run>``;
``running`` starts a real Worker for the length of a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats
import pytest
from nats.js import api

from dagnats.domain.events import EVENT_DECODER, Event, TaskPayload
from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.wire.headers import MSG_ID, TRACEPARENT
from dagnats.infra.wire.names import INBOX_STREAM, TASK_STREAM
from dagnats.infra.wire.subjects import stored_inbox_filter, task_subject
from dagnats.infra.worker import Worker

RESULTS = frozenset({"step.completed", "step.continue", "step.failed"})


async def engine_js(url: str):
    """A connection with every engine stream and bucket in place."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_resources(js)
    return nc, js


async def publish_task(
    js,
    task: str,
    run_id: str,
    data=None,
    *,
    step_id="s1",
    attempt=1,
    group=None,
    traceparent="",
    capabilities: tuple[str, ...] = (),
    **fields: Any,
):
    """Dispatch one task; ``fields``: more TaskPayload fields (iteration, instance, metadata, step_type)."""
    payload = TaskPayload(
        task_id=f"{run_id}.{step_id}",
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        input=data,
        task=task,
        workflow_name="wf",
        traceparent=traceparent,
        **fields,
    )
    instance = fields.get("instance")
    msg_id = f"{run_id}.{step_id}.{attempt}" + (f".i{instance}" if instance is not None else "")
    headers = {MSG_ID: msg_id}
    if traceparent:
        headers[TRACEPARENT] = traceparent
    subject = task_subject(task, run_id, group, capabilities)
    await js.publish(subject, msgspec.json.encode(payload), headers=headers)


class Inbox:
    """The facts reported for one run, read as the engine would (then acked)."""

    def __init__(self, sub) -> None:
        self._sub = sub
        self.headers: list[dict] = []

    @classmethod
    async def open(cls, js, run_id: str) -> Inbox:
        config = api.ConsumerConfig(inactive_threshold=120.0)
        return cls(await js.pull_subscribe(stored_inbox_filter(run_id), stream=INBOX_STREAM, config=config))

    async def next(self, timeout: float = 10.0) -> Event:
        msg = (await self._sub.fetch(1, timeout=timeout))[0]
        await msg.ack()
        self.headers.append(dict(msg.headers or {}))
        return EVENT_DECODER.decode(msg.data)

    async def until(self, event_type: str, timeout: float = 10.0) -> list[Event]:
        """Every fact up to and including the first of ``event_type``."""
        deadline, events = time.monotonic() + timeout, []
        while not events or events[-1].type != event_type:
            events.append(await self.next(max(0.1, deadline - time.monotonic())))
        return events

    async def result(self, timeout: float = 10.0) -> Event:
        """The first step.completed, step.continue or step.failed (skipping the facts before it)."""
        deadline = time.monotonic() + timeout
        while (event := await self.next(max(0.1, deadline - time.monotonic()))).type not in RESULTS:
            pass
        return event

    async def assert_empty(self, wait: float) -> None:
        with pytest.raises(nats.errors.TimeoutError):
            await self._sub.fetch(1, timeout=wait)


@contextlib.asynccontextmanager
async def running(worker: Worker):
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def queued(js) -> int:
    """Messages still stored in TASK_QUEUES (a work queue: acked ones are gone)."""
    return (await js.stream_info(TASK_STREAM)).state.messages


async def drained(js) -> bool:
    return await queued(js) == 0


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
