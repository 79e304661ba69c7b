"""Which run (step, trace) the current thread or task works for, for log lines.

A ``contextvars`` context, set where a run's work happens (a RunActor handling a
delivery, a worker running a task) and read by ``infra/logs.py``'s filter, which
puts ``run_id``, ``step_id`` and ``trace_id`` on every log record. Unset, all
three are empty. It lives in the domain only because both shells (actors and
the worker SDK, which loads no actor code) set it; it does no I/O.
"""

from __future__ import annotations

import contextvars

from dagnats.domain.trace_context import parse_trace_parent

# (run_id, step_id, trace_id)
_current: contextvars.ContextVar[tuple[str, str, str]] = contextvars.ContextVar(
    "dagnats_run_context", default=("", "", "")
)


def current() -> tuple[str, str, str]:
    """(run_id, step_id, trace_id) of the work at hand; empty strings when none."""
    return _current.get()


def trace_id(trace_parent: str) -> str:
    parsed = parse_trace_parent(trace_parent)
    return parsed[0] if parsed else ""


class restored:
    """``with restored(context):`` log lines inside carry ``context``, a ``current()`` taken
    elsewhere (another thread). A class, not a generator: every delivery, task and API
    request enters one."""

    __slots__ = ("context", "token")

    def __init__(self, context: tuple[str, str, str]) -> None:
        self.context = context

    def __enter__(self) -> None:
        self.token = _current.set(self.context)

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)


def run_context(run_id: str, step_id: str = "", trace_parent: str = "") -> restored:
    """``with run_context(...):`` log lines inside carry this run, step and the trace of
    ``trace_parent``."""
    return restored((run_id, step_id, trace_id(trace_parent)))
