"""Simulated workers and the workflow shapes the simulation runs.

A worker step takes one task from the queue and executes it — every execution is
journalled, whatever happens next — then, like ``TaskRunner``: maybe reports
``step.started``, reports the result to the run's inbox (``Nats-Msg-Id`` =
``<run>.<fact id>.d<the task message's sequence>``, ``fact_msg_id``) and acks.
A worker crash (seeded) leaves the task unacked, before or after the report: it
comes back after ack_wait and runs again, which the journal counts against the
fault. Task ``flaky`` fails its first attempt (transient) and succeeds on a retry.
"""

from __future__ import annotations

import random

from dagnats.domain import events as ev
from dagnats.domain.actions import EnqueueTask
from dagnats.domain.definition import RetryPolicy, StepDef, WorkflowDef
from dagnats.infra.wire.facts import fact_msg_id

from .world import World, task_key

SHAPES: dict[str, WorkflowDef] = {
    "chain": WorkflowDef(
        name="chain",
        steps=(
            StepDef(id="a", task="ok"),
            StepDef(id="b", task="ok", depends_on=("a",)),
            StepDef(id="c", task="ok", depends_on=("b",)),
        ),
    ),
    "fan": WorkflowDef(
        name="fan",
        steps=(
            StepDef(id="a", task="ok"),
            StepDef(id="b", task="ok", depends_on=("a",)),
            StepDef(id="c", task="ok", depends_on=("a",)),
            StepDef(id="d", task="ok", depends_on=("b", "c")),
        ),
    ),
    "retry": WorkflowDef(
        name="retry",
        steps=(
            StepDef(id="a", task="ok"),
            StepDef(
                id="b",
                task="flaky",
                depends_on=("a",),
                retry=RetryPolicy(max_attempts=3, initial_delay=2_000_000_000),
            ),
        ),
    ),
    "sleep": WorkflowDef(
        name="sleep",
        steps=(
            StepDef(id="a", task="ok"),
            StepDef(id="nap", type="sleep", depends_on=("a",), config={"duration": "5s"}),
            StepDef(id="b", task="ok", depends_on=("nap",)),
        ),
    ),
}


class Workers:
    def __init__(self, world: World, rng: random.Random, count: int = 2) -> None:
        self.world, self.rng = world, rng
        self.names = [f"w{n}" for n in range(count)]
        self.crash_rate = 0.0
        self.crashes = 0

    def step(self) -> bool:
        """One worker takes one task and works it; False if no task waits."""
        worker = self.rng.choice(self.names)
        taken = self.world.tasks.fetch(worker, lambda m: True, 1)
        if not taken:
            return False
        message = taken[0]
        task: EnqueueTask = message.body
        token = message.holder
        assert token is not None
        key = task_key(task)
        self.world.journal.executions[key] += 1
        if self._crashed(key):
            return True  # before reporting anything
        p = task.payload
        now = ev.format_timestamp(self.world.clock.now())
        if self.rng.random() < 0.3:
            started = self._fact(ev.STEP_STARTED, task, worker, now, None)
            self.world.publish_fact(started, fact_msg_id(started, message.seq))
        if task.task == "flaky" and p.attempt == 1:
            failure = ev.Failure(error="flaky: first attempt fails", failure_type=ev.FailureType.TRANSIENT.value)
            result = self._fact(ev.STEP_FAILED, task, worker, now, failure)
        else:
            result = self._fact(ev.STEP_COMPLETED, task, worker, now, {"step": p.step_id, "input": p.input})
        self.world.publish_fact(result, fact_msg_id(result, message.seq))
        if self._crashed(key):
            return True  # reported, not acked
        self.world.tasks.ack(message, token)
        return True

    def _crashed(self, key: tuple[str, str, int]) -> bool:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            self.crashes += 1
            self.world.journal.fault(key, "worker crash")
            return True
        return False

    def _fact(self, kind: str, task: EnqueueTask, worker: str, now: str, payload: object) -> ev.Event:
        p = task.payload
        return ev.make_event(
            kind,
            p.run_id,
            payload,
            step_id=p.step_id,
            attempt=p.attempt,
            instance=p.instance,
            timestamp=now,
            worker_id=worker,
            id=ev.fact_id(kind, p.step_id, p.attempt, p.instance),
        )
