"""Subject builders: every subject a run's data travels on.

Every identifier that becomes a subject token (run id, task, group, capability,
timer id, event name) must match `^[A-Za-z0-9_-]{1,64}$`: a `*` or `>` in a run id
would otherwise read or write every run's history. Each builder checks its
tokens and raises InvalidIdentifier naming the kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagnats.domain.capabilities import capability_token
from dagnats.domain.identifiers import check_identifier


def history_subject(run_id: str) -> str:
    """`history.<run>`: the run's event history, the source of truth."""
    return f"history.{check_identifier('run id', run_id)}"


def inbox_subject(run_id: str) -> str:
    """`inbox.<run>`: facts from outside the run's owner, waiting to be recorded. The inbox
    stream files them under the run's partition, `inbox.<partition>.<run>`."""
    return f"inbox.{check_identifier('run id', run_id)}"


def handoff_subject(partition: int) -> str:
    """`dagnats.handoff.<partition>`: a worker's result, by request, to whichever engine owns
    the partition now; it answers once the result is in the run's history."""
    return f"dagnats.handoff.{int(partition)}"


def stored_inbox_filter(run_id: str) -> str:
    """`inbox.*.<run>`: the run's facts as the inbox stream stores them (under its partition)."""
    return f"inbox.*.{check_identifier('run id', run_id)}"


def task_subject(task: str, run_id: str, group: str | None = None, capabilities: Iterable[str] = ()) -> str:
    """`task.<task>.<run>`, or `task.<task>.<group>.<run>` for a worker group; a step that
    requires capabilities: `task.<task>.<g>.<capset>.<run>` (see `_capability_prefix`)."""
    task, run_id = check_identifier("task name", task), check_identifier("run id", run_id)
    if names := tuple(capabilities):
        return f"{_capability_prefix(task, group, names)}.{run_id}"
    if group is None:
        return f"task.{task}.{run_id}"
    return f"task.{task}.{check_identifier('worker group', group)}.{run_id}"


def task_filter(task: str, group: str | None = None, capabilities: Iterable[str] = ()) -> str:
    """What the workers of `task` (in `group`, offering `capabilities`) consume: every run's tasks."""
    task = check_identifier("task name", task)
    if names := tuple(capabilities):
        return f"{_capability_prefix(task, group, names)}.*"
    return f"task.{task}.*" if group is None else f"task.{task}.{check_identifier('worker group', group)}.*"


def _capability_prefix(task: str, group: str | None, capabilities: tuple[str, ...]) -> str:
    """`task.<task>.<g>.<capset>`: `<g>` is `g-<group>` or `any` (a group may be named
    "any"), `<capset>` the set's token. One token more than any other task subject, so
    the consumers of `task.<task>.*` and `task.<task>.<group>.*` never match it."""
    names = [check_identifier("capability", name) for name in capabilities]
    g = "any" if group is None else f"g-{check_identifier('worker group', group)}"
    return f"task.{task}.{g}.{capability_token(names)}"


def schedule_subject(run_id: str, timer_id: str) -> str:
    """`schedule.<run>.<timer>`: a timer's message schedule, in the inbox stream (ADR-51
    fires a schedule only into its own stream). Publishing again replaces it; purging cancels it."""
    return f"schedule.{check_identifier('run id', run_id)}.{check_identifier('timer id', timer_id)}"


def schedules_filter(run_id: str) -> str:
    """Every pending timer of a run."""
    return f"schedule.{check_identifier('run id', run_id)}.*"


def event_subject(name: str) -> str:
    """`event.<name>`: an external event for wait-for-event steps and cancel_on."""
    return f"event.{check_identifier('event name', name)}"


def dead_letter_subject(task: str, run_id: str, step_id: str) -> str:
    """`dead.<task>.<run>.<step>`: a task that failed for good or was never finished, kept
    for an operator (DEAD_LETTERS)."""
    task, run_id = check_identifier("task name", task), check_identifier("run id", run_id)
    return f"dead.{task}.{run_id}.{check_identifier('step id', step_id)}"


def dead_letters_filter(run_id: str | None = None, step_id: str | None = None) -> str:
    """The dead letters of a run (of one of its steps), or all of them."""
    if run_id is None:
        return "dead.>"
    run_id = check_identifier("run id", run_id)
    return f"dead.*.{run_id}.{'*' if step_id is None else check_identifier('step id', step_id)}"


def notice_subject(run_id: str) -> str:
    """`dagnats.run.<run>.end`: the core-NATS notice of the record that ended the run.

    Not stored: a client waiting for a run listens here (no JetStream consumer per
    wait) and reads the run's status to close the race. One waiting for a step
    listens to the run's history subject (``history_subject``) instead.
    """
    return f"dagnats.run.{check_identifier('run id', run_id)}.end"
