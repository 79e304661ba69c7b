"""The worker SDK: run task handlers on the tasks the engine dispatches.

Theory of operation. Every (task, group) pair has one durable pull consumer
on TASK_QUEUES, ``workers-<task>[+<group>]``, shared by all worker processes
of that task. One fetch loop per consumer pulls as many messages as the
worker has free execution slots (``max_concurrent`` in all, across every
task) and hands each to a ``TaskRunner`` (task_context.py), which reports
step.started, runs the handler, reports the result and only then acks. The
worker never retries by itself: the engine decides from the failure type.

A worker that offers capabilities (``Worker(capabilities={"cuda"})``) also
follows the ``workflow_defs`` KV: for every step of a task it handles whose
``required_capabilities`` it offers (in a group it is in, if the step names
one), it ensures one more shared consumer, ``workers-<task>[+<group>]@<capset>``
on that set's own subject (see wire/subjects.py), and fetches from it like
from the others. Definitions registered after the worker started count too;
tasks queued before the consumer existed wait for it in the work queue.

The fetch loops outlive anything the connection does: an error or a stalled
fetch logs one line, backs off and re-ensures the consumer; a reconnect
(the server may have restarted) does the same. ``stop`` stops fetching,
lets running handlers finish for up to ``drain_timeout``, NAKs the rest.

A user file defines one ``Worker`` at top level and calls ``w.run()`` only
under ``if __name__ == "__main__":``; ``dagnats worker FILE.py`` imports it
with ``load_worker`` and runs it.

The pieces, one module each: ``task_consumer`` (a shared consumer: its name,
filter, set-up and fetch), ``execution_slots`` (handlers at once),
``definition_follower`` (capability sets from the registered definitions),
``task_context`` (one task through its handler), ``worker_file``
(``load_worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.domain.capabilities import capability_set, describe_capabilities
from dagnats.domain.errors import SignalTimeout, TaskAlreadyRegistered, WorkerLoadError
from dagnats.domain.identifiers import check_identifier, is_identifier

from . import event_loop, metrics, tracing
from .context import Continue, TaskContext
from .definition_follower import DefinitionFollower
from .execution_slots import ExecutionSlots
from .handler_threads import HandlerThreads, exit_if_handlers_hang
from .registry import Heartbeat
from .task_consumer import TaskConsumer
from .task_context import Permanent, RateLimited, TaskHandler, TaskRunner, describe, settle
from .wire.connection import nats_url as resolve_url
from .wire.connection import server_list
from .wire.lean import LeanJetStream
from .wire.reading import more_pending
from .worker_file import load_worker, loading

__all__ = ["Worker", "TaskContext", "Continue", "Permanent", "RateLimited", "SignalTimeout", "load_worker"]

log = logging.getLogger("dagnats.worker")

MAX_BATCH = 100
CLOSE_TIMEOUT = 2.0  # seconds a stopping worker waits for the connection to close

DEFAULT_MAX_DELIVERIES = 5  # deliveries of one task message before it is dead-lettered

F = TypeVar("F", bound=Callable[..., Any])


class Worker:
    """Runs task handlers for the engine; see the module docstring.

    ``max_concurrent``: handlers running at once, across all tasks.
    ``groups``: take the steps of these worker groups (``worker_group``) instead
    of the steps of no group. ``capabilities``: names (identifiers) of what this
    worker offers, e.g. ``{"cuda", "fast"}``; a step with ``required_capabilities``
    is delivered only to workers offering all of them, and a worker offering more
    takes it too. ``ack_wait``: seconds a task stays with this worker without
    word before JetStream hands it to another. ``drain_timeout``: seconds a
    stopping worker lets running handlers finish. ``max_deliveries``: times a
    task is handed to workers without being settled (the process died on it,
    or it outlived ``ack_wait``) before the engine moves it to the dead letters
    and fails that attempt; the consumers are shared, so the workers of a task
    should agree on it.
    """

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        max_concurrent: int = 10,
        groups: list[str] | None = None,
        capabilities: Iterable[str] | None = None,
        worker_id: str | None = None,
        ack_wait: float = 30.0,
        drain_timeout: float = 30.0,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if ack_wait <= 0:
            raise ValueError(f"ack_wait must be positive, not {ack_wait}")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {max_deliveries}")
        if isinstance(capabilities, str):  # a set of its letters is never what was meant
            raise TypeError(f"capabilities must be a set or list of names, not the string {capabilities!r}")
        self.nats_url = resolve_url(nats_url)
        self.max_concurrent = max_concurrent
        self.groups = [check_identifier("worker group", g) for g in groups or []]
        self.capabilities = capability_set(check_identifier("capability", c) for c in capabilities or ())
        self.worker_id = worker_id or f"worker-{secrets.token_hex(8)}"
        self.ack_wait = float(ack_wait)
        self.drain_timeout = float(drain_timeout)
        self.max_deliveries = int(max_deliveries)
        self._handlers: dict[str, TaskHandler] = {}
        self._nc: nats.NATS | None = None
        self._js: JetStreamContext | None = None
        self._stopping = False
        self._subs: list[TaskConsumer] = []
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None], Msg] = {}
        self._executor: HandlerThreads | None = None
        self._last_error_logged = ""
        self._follower: DefinitionFollower | None = None

    @property
    def tasks(self) -> list[str]:
        """The task names this worker has handlers for."""
        return list(self._handlers)

    def task(self, name: str) -> Callable[[F], F]:
        """Decorator: register ``func(ctx[, input])`` as the handler of task ``name``."""
        check_identifier("task name", name)

        def register(func: F) -> F:
            if name in self._handlers:
                raise TaskAlreadyRegistered(name)
            if self._nc is not None:
                raise RuntimeError(f"register task {name!r} before the worker starts")
            self._handlers[name] = TaskHandler(name, func)
            return func

        return register

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> None:
        """Connect, work until SIGINT/SIGTERM, then drain; blocks.

        A sync handler still running after the drain timeout does not keep the
        process alive: it exits (see handler_threads.py).
        """
        if (path := loading.get()) is not None:
            raise WorkerLoadError(path, cause='Worker.run() called at import; guard it with if __name__ == "__main__":')
        try:
            event_loop.run(self._run_until_signalled())
        except KeyboardInterrupt:  # a second Ctrl-C, or no signal handlers off the main thread
            pass
        exit_if_handlers_hang(self._executor, self.worker_id)

    async def _run_until_signalled(self) -> None:
        await self.start()
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        # Off the main thread there are no signal handlers: stop() is the way out.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            for sig in signals:
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                for sig in signals:
                    loop.remove_signal_handler(sig)
            await self.stop()
            await asyncio.to_thread(tracing.flush)  # the last deliveries' spans, before exiting
            await asyncio.to_thread(metrics.shutdown)  # and the last metrics

    async def start(self) -> None:
        """Connect, ensure the consumers and start fetching.

        Waits for NATS if it is not up yet (retrying every second); a missing
        TASK_QUEUES stream is waited for in the background.
        """
        if not self._handlers:
            raise RuntimeError("no tasks registered: decorate a handler with @worker.task(name)")
        if self._nc is not None:
            raise RuntimeError(f"worker {self.worker_id} is already started")
        self._nc = await nats.connect(
            server_list(self.nats_url),
            name=self.worker_id,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = LeanJetStream(self._nc)
        self._stopping = False
        self._stopped = asyncio.Event()
        self._slots = ExecutionSlots(self.max_concurrent)
        self._executor = HandlerThreads(self.max_concurrent)
        self._runner = TaskRunner(self._js, self.worker_id, self.ack_wait, self._executor)
        self._subs = [
            TaskConsumer(task, group, handler)
            for task, handler in self._handlers.items()
            for group in self._group_list()
        ]
        sticky = f"sticky-{self.worker_id}"
        if is_identifier(sticky):  # runs bound to this worker (sticky soft/hard) send tasks here
            self._subs += [TaskConsumer(t, sticky, h, own=True) for t, h in self._handlers.items()]
        await asyncio.gather(*(self._ensure(sub) for sub in self._subs))
        self._heartbeat = Heartbeat(self._js, self.worker_id, self.tasks, self.groups, list(self.capabilities))
        await self._heartbeat.start()
        self._loops = [asyncio.create_task(self._consume(sub), name=f"fetch-{sub.consumer}") for sub in self._subs]
        if self.capabilities:
            routes = (self.tasks, self.groups, self.capabilities)
            self._follower = DefinitionFollower(self._js, self.worker_id, routes, self._adopt, self._pause)
            await self._follower.start()
        log.info("worker %s started: %s on %s", self.worker_id, ", ".join(self.tasks), self.nats_url)

    def _group_list(self) -> list[str | None]:
        """The groups this worker consumes in; None: the task's own subject."""
        return list(self.groups) if self.groups else [None]

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (up to drain_timeout), close."""
        if self._nc is None or self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        if self._follower is not None:
            await self._follower.stop(CLOSE_TIMEOUT)
            self._follower = None
        self._slots.close()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for sub in self._subs:  # what the server sent after the last fetch goes to another worker now
            await sub.release()
        if self._running:
            log.info("worker %s draining %d running tasks", self.worker_id, len(self._running))
            _, late = await asyncio.wait(list(self._running), timeout=self.drain_timeout)
            await self._abandon(late)
        await self._heartbeat.stop()
        await self._close_connection()
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._nc = self._js = None
        log.info("worker %s stopped", self.worker_id)

    async def _close_connection(self) -> None:
        """Flush and close; bounded and quiet, since NATS may be gone by now."""
        assert self._nc is not None
        with contextlib.suppress(Exception):  # nothing left to save on a dead connection
            await self._nc.flush(timeout=2)
        try:
            await asyncio.wait_for(self._nc.close(), CLOSE_TIMEOUT)
        except Exception as err:  # noqa: BLE001 - e.g. the server went away: the socket is gone anyway
            log.info("worker %s: NATS connection did not close cleanly (%s)", self.worker_id, describe(err))

    async def _abandon(self, late: set[asyncio.Task[None]]) -> None:
        """Return tasks still running after drain_timeout to the queue, for another worker."""
        if not late:
            return
        log.warning("worker %s: %d tasks outlived the drain timeout; returning them", self.worker_id, len(late))
        msgs = [self._running[task] for task in late]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*(settle(msg.nak()) for msg in msgs))

    # -- capability sets ---------------------------------------------------------

    async def _adopt(self, task: str, group: str | None, caps: tuple[str, ...]) -> None:
        """One more consumer, for the steps of ``task`` (in ``group``) requiring ``caps``."""
        sub = TaskConsumer(task, group, self._handlers[task], capabilities=caps)
        if any(s.consumer == sub.consumer for s in self._subs):
            return
        self._subs.append(sub)
        await self._ensure(sub)
        self._loops.append(asyncio.create_task(self._consume(sub), name=f"fetch-{sub.consumer}"))
        log.info(
            "worker %s takes the steps of task %s%s that require %s (consumer %s)",
            self.worker_id,
            task,
            f" (group {group})" if group else "",
            describe_capabilities(caps),
            sub.consumer,
        )

    # -- consuming -----------------------------------------------------------

    async def _ensure(self, sub: TaskConsumer) -> bool:
        assert self._js is not None
        return await sub.ensure(self._js, self.ack_wait, self.max_deliveries)

    async def _consume(self, sub: TaskConsumer) -> None:
        failures = 0
        while not self._stopping:
            if sub.stale and not await self._ensure(sub):
                failures += 1
                await self._pause(failures)
                continue
            # An idle loop waits for one message without holding a slot (many loops
            # would otherwise hold every slot while nothing comes); the message, once
            # here, waits for a slot. A busy loop takes the free slots, then fetches.
            reserved = 0 if sub.idle else await self._slots.take(MAX_BATCH)
            if not sub.idle and not reserved:
                return
            try:
                msgs = await sub.fetch(reserved or 1)
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one failure
                self._slots.give(reserved)
                failures += 1
                sub.trouble(f"fetch from {sub.consumer} failed", err)
                sub.stale = True
                await self._pause(failures)
                continue
            failures, sub.last_trouble = 0, ""
            if msgs and not reserved:
                reserved = await self._slots.take(len(msgs))
                if not reserved:  # stopping: hand the message back
                    await asyncio.gather(*(settle(msg.nak()) for msg in msgs))
                    return
            await self._dispatch(sub, msgs, reserved)

    async def _dispatch(self, sub: TaskConsumer, msgs: list[Msg], reserved: int) -> None:
        # A fetch can return messages an earlier, expired pull left in the
        # subscription's queue: more than we hold slots for goes back at once.
        taken, extra = msgs[:reserved], msgs[reserved:]
        self._slots.give(reserved - len(taken))
        # Ask for a batch only when the server said more are waiting: a batch
        # pull on an empty queue lingers until it fills or times out.
        sub.idle = not msgs or not more_pending(msgs)
        for msg in taken:
            task = asyncio.create_task(self._execute(sub, msg))
            self._running[task] = msg
            task.add_done_callback(self._running.pop)
        await asyncio.gather(*(settle(msg.nak()) for msg in extra))

    async def _pause(self, failures: int) -> None:
        """Back off after a failure; returns early when the worker stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), min(5.0, 0.25 * 2**failures))

    async def _execute(self, sub: TaskConsumer, msg: Msg) -> None:
        try:
            if self._stopping:  # fetched, not started: back to the queue
                await settle(msg.nak())
            else:
                await self._runner.run(msg, sub.task, sub.handler)
        except Exception:  # noqa: BLE001 - unsettled: JetStream redelivers after ack_wait
            log.exception("task on %s failed in the worker itself", msg.subject)
        finally:
            self._slots.give(1)

    # -- connection callbacks ------------------------------------------------

    async def _on_error(self, err: Exception) -> None:
        # While the server is away the same error comes every reconnect attempt.
        text = describe(err)
        level = logging.DEBUG if text == self._last_error_logged else logging.WARNING
        self._last_error_logged = text
        if isinstance(err, (OSError, asyncio.TimeoutError)):
            log.log(level, "worker %s: cannot reach NATS at %s (%s); retrying", self.worker_id, self.nats_url, text)
        else:
            log.log(level, "worker %s: NATS error: %s", self.worker_id, text)

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            log.info("worker %s disconnected from NATS; reconnecting", self.worker_id)

    async def _on_reconnected(self) -> None:
        log.info("worker %s reconnected to NATS", self.worker_id)
        self._last_error_logged = ""
        for sub in self._subs:
            sub.stale = True  # the server may have lost or rebuilt the consumer
        if self._follower is not None:
            self._follower.rewatch()  # and the definitions watch's consumer
