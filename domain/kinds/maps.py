"""map: one task per element of the upstream array, each an attempt of its own.

On start the input must be an array of at most ``max_items`` elements (else
the step fails, saying why); an empty one completes at once with ``[]``.
``step.map.started`` opens one instance per element; at most
``concurrency`` of them are in flight (0: as many as one history record can
queue — ``MAX_QUEUED_AT_ONCE``, and their inputs in half a record; the rest
follow as instances finish). Each instance is queued,
run, retried and timed out by the step's own policy, its facts carrying
``instance``. When every instance has completed, ``step.map.completed``
gives the step the array of their outputs in input order; an instance that
fails for good fails the map (and the tasks of the others leave the queue).
"""

from __future__ import annotations

from itertools import compress, count, islice
from operator import attrgetter
from typing import Any

from .. import events as ev
from .. import state as st
from ..decision import INLINE_VALUE_LIMIT, STARTERS, Decision, encoded_size
from ..definition import MapConfig, StepDef
from ..fold import INPUT_FROM_WIRING
from ..resolve import resolve_input
from . import on_fact, on_recover


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, MapConfig)
    if not isinstance(data, list):
        d.reject(step, f"map: the input is not an array (got {_kind(data)})")
        return
    if len(data) > config.max_items:
        d.reject(step, f"map: the input has {len(data)} items, more than max_items {config.max_items}")
        return
    attempt = d.run.step(step.id).attempts + 1
    d.append(ev.StepMapStarted, step.id, attempt, ev.MapStart(count=len(data)))
    if not data:
        d.append(ev.StepMapCompleted, step.id, attempt)
        return
    dispatch_more(d, step, data)


def dispatch_more(d: Decision, step: StepDef, data: list[Any] | None = None) -> None:
    """Queue pending instances while fewer than ``concurrency`` are in flight."""
    state = d.run.step(step.id)
    if state.status != st.StepStatus.RUNNING:
        return
    config = step.parsed_config()
    assert isinstance(config, MapConfig)
    statuses = statuses_of(state)  # (at C speed: a map of thousands is walked on every element's fact)
    busy = sum(statuses.count(status) for status in _BUSY)
    room = (config.concurrency or MAX_QUEUED_AT_ONCE) - busy
    if room <= 0:
        return
    pending = list(islice(compress(count(), map(st.StepStatus.PENDING.__eq__, statuses)), room))
    if pending and data is None:
        data = resolve_input(d.run, step)
    budget = d.max_message // 2  # what this decision's step.queued facts may carry
    for index in pending:
        assert data is not None
        # A large element is recorded as a reference to the upstream output, not again.
        budget -= min(encoded_size(data[index]), INLINE_VALUE_LIMIT) + QUEUED_FACT_BYTES
        if budget < 0 and index != pending[0]:
            break  # the next instance to finish queues more
        if d.needs_admission(step, index):
            d.hold(step, data[index], index)
        else:
            d.dispatch(step, 1, data[index], input_from=INPUT_FROM_WIRING, instance=index)


# At most this many instances queued by one decision (a map of "all at once"), and what a
# step.queued fact costs besides its input: one history record must hold them all.
MAX_QUEUED_AT_ONCE = 1000
QUEUED_FACT_BYTES = 320

_BUSY = frozenset(
    {
        st.StepStatus.WAITING,
        st.StepStatus.QUEUED,
        st.StepStatus.RUNNING,
        st.StepStatus.RETRYING,
        st.StepStatus.FAILED,
    }
)


def statuses_of(state: st.StepState) -> list[st.StepStatus]:
    return list(map(_STATUS, state.instances))


_STATUS = attrgetter("status")


def _kind(value: Any) -> str:
    return {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


@on_fact(ev.StepCompleted)
def _instance_done(d: Decision, event: ev.StepCompleted) -> None:
    if event.instance is None:
        return
    step, state = d.steps.get(event.step_id), d.run.step(event.step_id)
    if step is None or state.status != st.StepStatus.RUNNING:
        return
    if statuses_of(state).count(st.StepStatus.COMPLETED) == len(state.instances):
        d.append(ev.StepMapCompleted, step.id, state.attempts)
    else:
        dispatch_more(d, step)


@on_recover
def _queue_again(d: Decision) -> None:
    """A rebuilt run re-issues its queued instances' tasks (the shell sends only lost ones)."""
    for step_id, state in d.run.steps.items():
        if state.status != st.StepStatus.RUNNING or not state.instances:
            continue
        step = d.steps[step_id]
        for index, instance in enumerate(state.instances):
            if instance.status == st.StepStatus.QUEUED:
                d.actions.append(d.task_for(step, instance.attempts, instance.input, instance=index))


STARTERS["map"] = start
