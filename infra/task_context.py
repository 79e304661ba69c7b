"""What a task handler sees, and how one call of it becomes a step fact.

A handler is ``f(ctx)`` or ``f(ctx, arg: T)``, sync or async. ``TaskHandler``
reads the signature once at registration; for each task it decodes the input
into ``T`` with msgspec, calls the function and turns the return value or the
exception into an ``Outcome``: the type and payload of the ``step.completed``
or ``step.failed`` fact the worker then reports. Input that does not decode and
output that does not encode are permanent failures: retrying cannot fix them.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import typing
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dagnats.domain.events import STEP_COMPLETED, STEP_FAILED, FailureType


class Permanent(Exception):
    """Raise from a handler to fail the step at once, without retries."""


class RateLimited(Exception):
    """Raise from a handler to have the engine retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, float(retry_after))


@dataclass(frozen=True)
class TaskContext:
    """The task being executed: ids, attempt and a heartbeat."""

    run_id: str
    step_id: str
    attempt: int
    task: str
    worker_id: str
    workflow_name: str = ""
    trace_parent: str = ""
    _beat: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def heartbeat(self) -> None:
        """Tell JetStream the task is still being worked on (safe from any thread)."""
        self._beat()


class Outcome(msgspec.Struct, frozen=True):
    """The result fact of one execution: ``step.completed`` or ``step.failed``."""

    type: str
    payload: Any = None

    @property
    def failed(self) -> bool:
        return self.type == STEP_FAILED


MAX_ERROR_CHARS = 16_384  # the engine keeps less; this only keeps a fact under max_payload


def failure(error: str, failure_type: FailureType, retry_after_ms: int | None = None) -> Outcome:
    """A ``step.failed`` outcome with the payload the engine folds."""
    payload: dict[str, Any] = {"error": error[:MAX_ERROR_CHARS], "failure_type": failure_type.value}
    if retry_after_ms is not None:
        payload["retry_after_ms"] = retry_after_ms
    return Outcome(STEP_FAILED, payload)


class TaskHandler:
    """One registered handler: its input type, and how to call it."""

    def __init__(self, task: str, func: Callable[..., Any]) -> None:
        self.task, self.func = task, func
        self.is_async = inspect.iscoroutinefunction(func)
        self.takes_input, self.input_type = _input_parameter(task, func)

    async def __call__(self, ctx: TaskContext, data: Any, executor: Executor) -> Outcome:
        """Decode ``data``, run the handler and encode its result; never raises."""
        args: tuple[Any, ...] = (ctx,)
        if self.takes_input:
            try:
                args += (_decode(data, self.input_type),)
            except msgspec.ValidationError as err:
                shown = _type_name(self.input_type)
                return failure(f"input does not match {shown}: {err}", FailureType.PERMANENT)
        try:
            result = await self._call(args, executor)
        except Permanent as err:
            return failure(str(err), FailureType.PERMANENT)
        except RateLimited as err:
            return failure(str(err), FailureType.RATE_LIMITED, round(err.retry_after * 1000))
        except Exception as err:  # noqa: BLE001 - any other error is the engine's to retry
            return failure(f"{type(err).__name__}: {err}", FailureType.TRANSIENT)
        try:
            return Outcome(STEP_COMPLETED, msgspec.to_builtins(result))
        except (TypeError, ValueError, OverflowError) as err:
            return failure(f"output does not encode as JSON: {err}", FailureType.PERMANENT)

    async def _call(self, args: tuple[Any, ...], executor: Executor) -> Any:
        if self.is_async:
            return await self.func(*args)
        # Sync handlers run in the pool; the copied context carries the span.
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, context.run, self.func, *args)


def _input_parameter(task: str, func: Callable[..., Any]) -> tuple[bool, Any]:
    """Whether ``func`` takes an input argument, and the type to decode it into."""
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise TypeError(
            f"handler for task {task!r} must take (ctx) or (ctx, input), "
            f"not {len(params)} required positional parameters"
        )
    if len(params) == 1:
        return False, Any
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an unresolvable hint falls back to the raw annotation
        hints = {}
    annotation = hints.get(params[1].name, params[1].annotation)
    if isinstance(annotation, str):
        raise TypeError(f"handler for task {task!r}: cannot resolve the annotation {annotation!r}")
    return True, Any if annotation is inspect.Parameter.empty else annotation


def _decode(data: Any, input_type: Any) -> Any:
    if input_type is Any:
        return data
    return msgspec.convert(data, input_type)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return repr(tp).replace("typing.", "")
