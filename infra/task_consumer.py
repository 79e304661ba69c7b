"""A worker's view of one shared task consumer: ``workers-<task>[+<group>][@<capset>]``.

Every (task, group, capability set) a worker takes has one durable pull
consumer on TASK_QUEUES, shared by all the worker processes of that task;
``TaskConsumer`` names it, knows its filter subject, (re)creates it and binds
a pull subscription (``ensure``), and fetches from it (``fetch``), telling a
stalled fetch from an empty one. A failure is logged once; the same failure
again only at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.domain.capabilities import capability_token, describe_capabilities

from .task_context import TaskHandler, describe
from .wire.names import TASK_STREAM
from .wire.reading import let_go
from .wire.subjects import task_filter

log = logging.getLogger("dagnats.worker")

FETCH_TIMEOUT = 1.0  # short: a stop waits at most this long for the fetch loops
STALL_MARGIN = 5.0  # a fetch this much past its timeout is stuck (nats.py #933, #986)
MAX_ACK_PENDING = 1000
STICKY_CONSUMER_IDLE = 3600.0  # seconds


@dataclass(eq=False)
class TaskConsumer:
    """One shared consumer and this worker's fetch state for it."""

    task: str
    group: str | None
    handler: TaskHandler
    own: bool = False  # this worker's sticky subject, not a shared one
    capabilities: tuple[str, ...] = ()  # the steps requiring this set (canonical), on its subject
    pull: JetStreamContext.PullSubscription | None = None
    stale: bool = True
    idle: bool = True  # the last fetch was empty: ask for one message, hold one slot
    last_trouble: str = ""

    def trouble(self, what: str, err: BaseException) -> None:
        """Log a failure once; the same failure again (every retry) only at DEBUG."""
        text = f"{what}: {describe(err)}"
        log.log(logging.DEBUG if text == self.last_trouble else logging.WARNING, "%s; retrying", text)
        self.last_trouble = text

    @property
    def consumer(self) -> str:
        # '+' and '@' cannot occur in a task or group name, so task "a-b" and task "a" in
        # group "b" differ, and so do a group and a capability set.
        name = f"workers-{self.task}" if self.group is None else f"workers-{self.task}+{self.group}"
        return f"{name}@{capability_token(self.capabilities)}" if self.capabilities else name

    @property
    def filter_subject(self) -> str:
        return task_filter(self.task, self.group, self.capabilities)

    @property
    def offering(self) -> str:
        return f" offering {describe_capabilities(self.capabilities)}" if self.capabilities else ""

    async def ensure(self, js: JetStreamContext, ack_wait: float, max_deliveries: int) -> bool:
        """Create or update the shared consumer, and bind a fresh pull subscription to it."""
        config = api.ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            description=f"dagnats workers of task {self.task}{self.offering}",
            filter_subject=self.filter_subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            # Bounded: a task that kills every worker it reaches must not circle for ever.
            # The server then leaves it in the queue and says so; the engine moves it to
            # the dead letters and fails the attempt (engine/dead_letters.py).
            max_deliver=max_deliveries,
            max_ack_pending=MAX_ACK_PENDING,
            # A worker's own (sticky) consumer goes away an hour after the worker does;
            # its tasks stay queued for a worker started again with the same id.
            inactive_threshold=STICKY_CONSUMER_IDLE if self.own else None,
        )
        try:
            await js.add_consumer(TASK_STREAM, config)
            await self.release()
            self.pull = await js.pull_subscribe_bind(durable=self.consumer, stream=TASK_STREAM)
        except Exception as err:  # noqa: BLE001 - retried by the fetch loop
            self.trouble(f"cannot set up consumer {self.consumer} on {TASK_STREAM}", err)
            self.stale = True
            return False
        self.stale = False
        return True

    async def release(self) -> None:
        """Unsubscribe, giving back at once any task the server sent after the last fetch
        (``wire.reading.let_go``): left to the ack wait, another worker would wait for it."""
        if self.pull is not None:
            pull, self.pull = self.pull, None
            await let_go(pull, self.consumer, log)

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to ``batch`` messages ([] after FETCH_TIMEOUT); raises if the fetch stalled."""
        assert self.pull is not None
        began = time.monotonic()
        try:
            return await asyncio.wait_for(self.pull.fetch(batch, timeout=FETCH_TIMEOUT), FETCH_TIMEOUT + STALL_MARGIN)
        except TimeoutError:  # nats' own fetch timeout is one: no messages
            if time.monotonic() - began >= FETCH_TIMEOUT + STALL_MARGIN:
                raise RuntimeError(f"fetch stalled for {time.monotonic() - began:.1f} s") from None
            return []
