"""Crash drills: kill -9 the engine or a worker mid-run, start again, and the run completes.

NATS belongs to the test (a NatsServer on tmp data), the engine is
`dagnats serve --external`, so killing the engine leaves NATS up and the
facts reported meanwhile wait in the run's inbox. Workers journal every
execution to a file outside NATS: the drills count what really ran.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from e2e_support import Cli, Serve, WorkerProc, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = """
from typing import Any


@w.task("drill-quick")
def quick(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    journal(ctx, "end")
    return f"{ctx.step_id} done"


@w.task("drill-slow")
def slow(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    time.sleep(2)
    journal(ctx, "end")
    return f"{ctx.step_id} done slowly"


@w.task("drill-doomed")
def doomed(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    if executions(ctx.run_id, ctx.step_id) == 1:
        time.sleep(120)  # the first process to take this task is killed here
    journal(ctx, "end")
    return f"rescued by {os.getpid()}"
"""

# ack_wait=2: a task whose worker died comes back after ~2 s, not 30.
WORKER_ARGS = "max_concurrent=8, ack_wait=2, drain_timeout=1"
RUN_TIMEOUT = 60.0  # a fact fetched by a killed engine is redelivered after the inbox ack_wait (30 s)


@pytest.fixture
def engine(nats):
    serve = Serve(nats.url, external=True)
    try:
        yield serve.start()
    finally:
        serve.stop()


@pytest.fixture
def cli(nats):
    return Cli(nats.url)


@pytest.fixture
def worker(nats, tmp_path):
    w = WorkerProc(tmp_path, nats.url, HANDLERS, worker_args=WORKER_ARGS)
    try:
        yield w
    finally:
        w.stop()


def chain(name: str, middle: str) -> dict:
    return {
        "name": name,
        "steps": [
            {"id": "s1", "task": "drill-quick"},
            {"id": "s2", "task": middle, "depends_on": ["s1"]},
            {"id": "s3", "task": "drill-quick", "depends_on": ["s2"]},
        ],
    }


def completed_per_step(cli: Cli, run_id: str) -> Counter:
    return Counter(e["step_id"] for e in cli.events(run_id) if e["type"] == "step.completed")


def test_engine_killed_mid_step_restarts_and_finishes_without_repeating_steps(engine, cli, worker, tmp_path):
    cli.register(chain("drill-mid-step", "drill-slow"), tmp_path)
    worker.start()
    run_id = cli.start("drill-mid-step", "go")
    wait_for(lambda: worker.journal.count(run_id, "s2"), 15, "step s2 to begin")
    killed_at = time.time()
    engine.kill()
    assert not engine.running
    engine.start()
    run = cli.wait_status(run_id, {"completed", "failed"}, timeout=RUN_TIMEOUT)
    assert run["status"] == "completed", engine.output
    assert run["output"] == "s3 done"
    counts = {step: worker.journal.count(run_id, step) for step in ("s1", "s2", "s3")}
    # The worker never died, so even s2 ran once (at-least-once allows more; none happened).
    assert counts == {"s1": 1, "s2": 1, "s3": 1}, counts
    # s2 finished while no engine ran: its result waited in the inbox.
    assert worker.journal.executions(run_id, "s2")[0].end > killed_at
    assert completed_per_step(cli, run_id) == {"s1": 1, "s2": 1, "s3": 1}
    assert [e["type"] for e in cli.events(run_id)].count("workflow.completed") == 1


def test_engine_killed_right_after_run_start_still_completes_the_run(engine, cli, worker, tmp_path):
    cli.register(chain("drill-at-start", "drill-quick"), tmp_path)
    run_id = cli.start("drill-at-start", "go")
    engine.kill()  # no worker yet: no step can have run
    assert worker.journal.executions(run_id) == []
    engine.start()
    worker.start()
    run = cli.wait_status(run_id, {"completed", "failed"}, timeout=RUN_TIMEOUT)
    assert run["status"] == "completed", engine.output
    assert {step: worker.journal.count(run_id, step) for step in ("s1", "s2", "s3")} == {"s1": 1, "s2": 1, "s3": 1}
    assert completed_per_step(cli, run_id) == {"s1": 1, "s2": 1, "s3": 1}


def test_a_task_of_a_killed_worker_is_redelivered_to_another_worker(engine, cli, worker, tmp_path):
    cli.register(chain("drill-worker-kill", "drill-doomed"), tmp_path)
    doomed = worker.start()
    run_id = cli.start("drill-worker-kill", "go")
    wait_for(lambda: worker.journal.count(run_id, "s2"), 15, "step s2 to begin in the first worker")
    doomed.kill()
    rescuer = worker.start()
    run = cli.wait_status(run_id, {"completed", "failed"}, timeout=30)
    assert run["status"] == "completed", worker.output
    assert run["steps"]["s2"]["output"] == f"rescued by {rescuer.pid}"
    executions = worker.journal.executions(run_id, "s2")
    # At-least-once: the killed execution and the redelivered one, nothing more.
    assert [(e.pid, e.end is not None) for e in executions] == [(doomed.pid, False), (rescuer.pid, True)]
    assert worker.journal.count(run_id, "s1") == 1 and worker.journal.count(run_id, "s3") == 1
    assert completed_per_step(cli, run_id) == {"s1": 1, "s2": 1, "s3": 1}
    # The redelivered task is the same attempt: the engine saw one execution of s2.
    assert run["steps"]["s2"]["attempts"] == 1
