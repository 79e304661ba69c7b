"""Helpers shared by the tests of flow control's side of a run (test_admission*.py)."""

from __future__ import annotations

from typing import Any

from dagnats.domain.actions import Action, AppendEvent, EnqueueTask, Release
from dagnats.domain.definition import WorkflowDef, workflow_from_object
from dagnats.domain.limits import holder_id
from dagnats.domain.timers import LIMIT

from strategies import RUN_ID, Recorder, at, started_event, timer_fired

CONCURRENT = {"id": "a", "task": "charge", "max_task_concurrency": 2}
BOTH = {"id": "a", "task": "charge", "max_task_concurrency": 1, "singleton": True}
MAX_RUNS = {"max_runs": 2}


def workflow(*steps: dict[str, Any], **fields: Any) -> WorkflowDef:
    return workflow_from_object({"name": "wf", "steps": list(steps), **fields})


def mapped(*others: dict[str, Any], **limit: Any) -> WorkflowDef:
    """A map ``each`` over the output of ``list``, under ``limit``."""
    each = {"id": "each", "task": "each", "type": "map", "depends_on": ["list"], **limit}
    return workflow({"id": "list", "task": "list"}, each, *others)


def start(defn: WorkflowDef, data: Any = None) -> Recorder:
    rec = Recorder()
    rec.feed(started_event(defn, data), at(0))
    return rec


def of(actions: list[Action], cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def appended(actions: list[Action], cls: type) -> list:
    return [a.event for a in actions if isinstance(a, AppendEvent) and isinstance(a.event, cls)]


def tasks(actions: list[Action]) -> list[tuple[str, int, int | None]]:
    return [(t.payload.step_id, t.payload.attempt, t.payload.instance) for t in of(actions, EnqueueTask)]


def released(actions: list[Action]) -> list[tuple[str, str]]:
    return sorted((r.key, r.holder) for r in of(actions, Release))


def holder(step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    return holder_id(RUN_ID, step_id, attempt, instance)


def fire_limit(rec: Recorder, t: float) -> list[Action]:
    (due,) = [timer for timer in rec.timers if timer.kind == LIMIT][-1:]
    return rec.feed(timer_fired(due, at(t)), at(t))


def ms(t: float) -> int:
    return int(at(t).timestamp() * 1000)
