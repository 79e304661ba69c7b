"""What a handler sees of its task (``TaskContext``) and may return besides a value (``Continue``).

Beyond its ids, a context reaches the worker for the attempt it belongs to
(``TaskIO``): the asyncio loop that owns the NATS connection, the KV buckets,
and the run's inbox. Sync handlers run on pool threads, so the methods that
talk to NATS hop to that loop (``run_coroutine_threadsafe``) and block the
handler's thread until done; on the loop itself, in an async handler, the
same methods return an awaitable instead. One spelling serves both:

    def step(ctx, data):                  async def step(ctx, data):
        state = ctx.last_checkpoint()         state = await ctx.last_checkpoint()
        ctx.checkpoint(state)                 await ctx.checkpoint(state)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from msgspec import UNSET
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from dagnats.domain.errors import SignalTimeout
from dagnats.domain.events import STEP_WAITING, WaitingFor, format_timestamp
from dagnats.domain.identifiers import check_identifier

from .added_steps import AddedSteps
from .signals import TIMED_OUT, receive_signal
from .wire.keys import checkpoint_key, signal_key
from .wire.names import CHECKPOINTS_BUCKET, SIGNALS_BUCKET

DEFAULT_SIGNAL_TIMEOUT = 3600.0  # seconds


@dataclass(frozen=True)
class Continue:
    """Return ``Continue(data)`` from an agent_loop step's handler to end this iteration
    and run the next one with ``data`` (any JSON value) as its input.

    The engine counts the iteration and fails the step past the loop's
    ``max_iterations`` or ``max_duration``; return a plain value to finish the loop.
    """

    data: Any = None


class TaskIO:
    """The worker's side of one running attempt: its loop, buckets, inbox and ack timer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bucket: Callable[[str], Awaitable[KeyValue]],
        report: Callable[[TaskContext, str, Any, int], Awaitable[bool]],
        beat: Callable[[], None],
        added: AddedSteps,
    ) -> None:
        self.loop, self.bucket, self.report, self.beat, self.added = loop, bucket, report, beat, added
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._waits = 0

    def next_wait(self) -> int:
        """Number this attempt's next wait (1, 2, ...): each reports its own step.waiting."""
        with self._lock:
            self._waits += 1
            return self._waits

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """``coro`` itself on the worker's loop (to be awaited); from any other thread, its result."""
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            return coro
        with self._lock:
            if self._closed or self.loop.is_closed():
                coro.close()
                raise RuntimeError("the task is no longer running on this worker")
            call = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._calls.add(call)
        try:
            return call.result()
        finally:
            with self._lock:
                self._calls.discard(call)

    def close(self) -> None:
        """The attempt is over: cancel what its handler's threads still wait for.

        A sync handler can outlive its task (returned to the queue at a stop);
        it must not go on to consume a signal meant for the next attempt.
        """
        with self._lock:
            self._closed = True
            calls, self._calls = self._calls, set()
        for call in calls:
            call.cancel()


@dataclass(frozen=True)
class TaskContext:
    """The task being executed, and what its handler can do besides returning.

    ``attempt`` counts from 1 across retries and agent_loop iterations;
    ``iteration`` is the agent_loop iteration (0 first), ``instance`` the map
    element's index (None outside a map), ``metadata`` the step's metadata
    (``{}`` if it has none), ``step_type`` the step's type ("normal",
    "agent_loop", ...; "" from an engine that does not say). ``baggage`` is the
    W3C baggage the run was started with (also in the OpenTelemetry context
    the handler runs in: ``opentelemetry.baggage.get_all()``).

    ``checkpoint``, ``last_checkpoint`` and ``wait_for_signal`` block a sync
    handler until done and are awaited in an async one (see the module docs).
    """

    run_id: str
    step_id: str
    attempt: int
    task: str
    worker_id: str
    workflow_name: str = ""
    trace_parent: str = ""
    iteration: int = 0
    instance: int | None = None
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    step_type: str = ""
    # The run's W3C tracestate and baggage (key -> value), as its caller started it.
    trace_state: str = ""
    baggage: dict[str, str] = field(default_factory=dict, hash=False)
    _io: TaskIO | None = field(default=None, repr=False, compare=False)

    def heartbeat(self) -> None:
        """Tell JetStream the task is still being worked on (safe from any thread)."""
        if self._io is not None:
            self._io.beat()

    # -- checkpoints -----------------------------------------------------------

    def checkpoint(self, data: Any) -> Any:
        """Save ``data`` (any JSON value) as this step's checkpoint, replacing the last.

        One checkpoint per step (per element of a map step), kept across
        attempts and agent_loop iterations: a retried attempt and the next
        iteration read it with ``last_checkpoint()``. Raises TypeError if
        ``data`` does not encode as JSON.
        """
        try:
            body = msgspec.json.encode(data)
        except (TypeError, ValueError, OverflowError) as err:
            raise TypeError(f"checkpoint of step {self.step_id} does not encode as JSON: {err}") from None
        return self._attached().call(self._put_checkpoint(body))

    def last_checkpoint(self) -> Any:
        """This step's last saved checkpoint, or None if it has none."""
        return self._attached().call(self._get_checkpoint())

    async def _put_checkpoint(self, body: bytes) -> None:
        kv = await self._attached().bucket(CHECKPOINTS_BUCKET)
        await kv.put(checkpoint_key(self.run_id, self.step_id, self.instance), body)

    async def _get_checkpoint(self) -> Any:
        kv = await self._attached().bucket(CHECKPOINTS_BUCKET)
        try:
            entry = await kv.get(checkpoint_key(self.run_id, self.step_id, self.instance))
        except KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value) if entry.value else None

    # -- signals -----------------------------------------------------------------

    def wait_for_signal(self, name: str, timeout: float = DEFAULT_SIGNAL_TIMEOUT) -> Any:
        """The data of the run's next signal ``name``, waiting up to ``timeout`` seconds.

        A signal sent before the wait is returned at once. A returned signal is
        consumed: waiting for the same name again waits for a new one (if a
        later failure of this attempt must not lose its data, checkpoint it).
        While it waits, the step shows as waiting for the signal in ``run
        status``. Raises InvalidIdentifier for a bad name (before waiting) and
        SignalTimeout when no signal comes in time.
        """
        check_identifier("signal name", name)
        if not timeout > 0:
            raise ValueError(f"wait_for_signal timeout must be positive, not {timeout!r}")
        return self._attached().call(self._receive(name, float(timeout)))

    async def _receive(self, name: str, timeout: float) -> Any:
        io = self._attached()
        due = format_timestamp(datetime.now(UTC) + timedelta(seconds=timeout))

        async def waiting() -> None:
            await io.report(self, STEP_WAITING, WaitingFor(kind="signal", name=name, due=due), io.next_wait())

        kv = await io.bucket(SIGNALS_BUCKET)
        data = await receive_signal(kv, signal_key(self.run_id, name), timeout, waiting)
        if data is TIMED_OUT:
            raise SignalTimeout(self.run_id, self.step_id, name, timeout)
        return data

    # -- steps added to the run ------------------------------------------------

    def add_step(self, id: str, task: str, input: Any = UNSET, after: Iterable[str] = ()) -> str:
        """Add a step, running ``task``, to the run; it runs after this step and the steps in ``after``.

        ``input`` is the new step's input, or a template whose ``{"$ref":
        "step.path"}`` objects the engine fills from upstream outputs; without
        it the step gets its dependencies' outputs as usual. The steps are
        added only if this handler succeeds (returns a value or ``Continue``),
        all at once, before its result. Raises InvalidIdentifier for a bad id
        or task name, InvalidAddedStep for an id this attempt already added or
        an input that does not encode as JSON. Returns ``id``.
        """
        return self._attached().added.add(id, task, input, after)

    def _attached(self) -> TaskIO:
        if self._io is None:
            raise RuntimeError("this TaskContext does not belong to a task running in a worker")
        return self._io
