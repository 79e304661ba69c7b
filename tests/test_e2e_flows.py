"""Workflow shapes and failure handling, end to end: CLI, `dagnats serve`, real worker processes.

One engine and one worker process serve the whole module; each test uses its
own workflow and task names. Handlers journal every execution to a file
outside NATS, so the tests count what really ran.
"""

from __future__ import annotations

import json
import re

import pytest

from e2e_support import WorkerProc, module_env, step, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = """
from typing import Any


@w.task("fan-start")
def fan_start(ctx: TaskContext, data: Any) -> str:
    return "go"


@w.task("fan-sleep")
def fan_sleep(ctx: TaskContext, data: str) -> str:
    journal(ctx, "begin")
    time.sleep(0.5)
    journal(ctx, "end")
    return f"{ctx.step_id} saw {data}"


@w.task("fan-join")
def fan_join(ctx: TaskContext, data: dict) -> dict:
    return data


@w.task("flaky")
def flaky(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return f"ok on attempt {ctx.attempt}"


@w.task("always-fails")
def always_fails(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@w.task("refuses")
def refuses(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    raise Permanent("account 42 does not exist")


@w.task("wants-int")
def wants_int(ctx: TaskContext, n: int) -> int:
    journal(ctx, "begin")
    return n + 1


@w.task("slow-first")
def slow_first(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    if ctx.attempt == 1:
        time.sleep(3)
    journal(ctx, "end")
    return f"result of attempt {ctx.attempt}"


@w.task("blocker")
async def blocker(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    await asyncio.sleep(120)
    return "unblocked"


@w.task("after")
def after(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    return "after"
"""

RUN_ID = r"[0-9a-f]{32}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with module_env(tmp_path_factory.mktemp("flows"), HANDLERS, max_concurrent=8) as env:
        yield env


def test_fan_out_steps_run_in_parallel_and_the_join_gets_each_output_by_id(env):
    env.register(
        {
            "name": "e2e-fan-out",
            "steps": [
                step("A", "fan-start"),
                step("B", "fan-sleep", ["A"]),
                step("C", "fan-sleep", ["A"]),
                step("D", "fan-sleep", ["A"]),
                step("E", "fan-join", ["B", "C", "D"]),
            ],
        }
    )
    run_id = env.cli.start("e2e-fan-out", {"x": 1})
    run = env.cli.wait_status(run_id, {"completed", "failed"})
    assert run["status"] == "completed", env.diagnose()
    assert run["output"] == {"B": "B saw go", "C": "C saw go", "D": "D saw go"}
    done = env.journal.executions(run_id)
    assert sorted(e.step for e in done) == ["B", "C", "D"]
    assert all(e.end is not None for e in done)
    # Every interval contains the latest start: the three slept at the same time.
    assert max(e.start for e in done) < min(e.end for e in done), done


THREE_SLOT_HANDLERS = """
@w.task("slots-start")
def slots_start(ctx: TaskContext) -> str:
    return "go"


@w.task("slots-sleep")
def slots_sleep(ctx: TaskContext, data: str) -> str:
    journal(ctx, "begin")
    time.sleep(0.5)
    journal(ctx, "end")
    return ctx.step_id


@w.task("slots-join")
def slots_join(ctx: TaskContext, data: dict) -> dict:
    return data
"""


def test_a_worker_with_three_slots_runs_three_ready_tasks_at_once(env, tmp_path):
    worker = WorkerProc(tmp_path, env.cli.url, THREE_SLOT_HANDLERS, worker_args="max_concurrent=3")
    try:
        worker.start()
        env.register(
            {
                "name": "e2e-three-slots",
                "steps": [
                    step("A", "slots-start"),
                    step("B", "slots-sleep", ["A"]),
                    step("C", "slots-sleep", ["A"]),
                    step("D", "slots-sleep", ["A"]),
                    step("E", "slots-join", ["B", "C", "D"]),
                ],
            }
        )
        run_id = env.cli.start("e2e-three-slots")
        run = env.cli.wait_status(run_id, {"completed", "failed"})
    finally:
        worker.stop()
    assert run["output"] == {"B": "B", "C": "C", "D": "D"}
    done = worker.journal.executions(run_id)
    assert len(done) == 3 and max(e.start for e in done) < min(e.end for e in done), done


def test_a_step_failing_twice_succeeds_on_its_third_attempt(env):
    env.register(
        {
            "name": "e2e-retry-ok",
            "steps": [
                step("s", "flaky", retry={"max_attempts": 3, "initial_delay": "100ms"}),
            ],
        }
    )
    run_id = env.cli.start("e2e-retry-ok")
    run = env.cli.wait_status(run_id, {"completed", "failed"})
    assert run["status"] == "completed", run
    assert run["steps"]["s"]["attempts"] == 3
    assert run["output"] == "ok on attempt 3"
    assert [e.attempt for e in env.journal.executions(run_id)] == [1, 2, 3]
    failed = [e for e in env.cli.events(run_id) if e["type"] == "step.failed"]
    assert [e["attempt"] for e in failed] == [1, 2]


def test_exhausted_retries_fail_the_run_and_watch_exits_non_zero(env):
    env.register(
        {
            "name": "e2e-retry-exhausted",
            "steps": [
                step("s", "always-fails", retry={"max_attempts": 2, "initial_delay": "100ms"}),
            ],
        }
    )
    watched = env.cli("run", "start", "e2e-retry-exhausted", "--watch", check=False, timeout=30)
    assert watched.returncode != 0, watched
    lines = watched.stdout.splitlines()
    run_id = re.fullmatch(rf"Run ({RUN_ID}) started", lines[0]).group(1)
    assert lines[-1] == f"Run {run_id} failed: step s failed after 3 attempts: RuntimeError: boom on attempt 3"
    assert lines.count("step.s: retrying in 100ms") == 2
    assert [line for line in lines if line.startswith("step.s: failed")] == [
        f"step.s: failed (attempt {n}: RuntimeError: boom on attempt {n})" for n in (1, 2, 3)
    ]
    run = env.cli.status(run_id)
    assert run["status"] == "failed"
    assert run["steps"]["s"]["attempts"] == 3
    assert env.journal.count(run_id, "s") == 3
    no_output = env.cli("run", "output", run_id, check=False)
    assert no_output.returncode == 1 and no_output.stderr.startswith(f"error: run {run_id} is failed")


def test_permanent_fails_at_once_despite_a_retry_policy(env):
    env.register(
        {
            "name": "e2e-permanent",
            "steps": [
                step("s", "refuses", retry={"max_attempts": 3, "initial_delay": "100ms"}),
            ],
        }
    )
    run_id = env.cli.start("e2e-permanent")
    run = env.cli.wait_status(run_id, {"completed", "failed"})
    assert run["status"] == "failed"
    assert run["steps"]["s"]["attempts"] == 1
    assert "account 42 does not exist" in run["steps"]["s"]["error"]
    assert "account 42 does not exist" in (run["error"] or "")
    assert env.journal.count(run_id, "s") == 1


def test_input_that_does_not_decode_into_the_annotated_type_fails_permanently(env):
    env.register(
        {
            "name": "e2e-typed",
            "steps": [
                step("s", "wants-int", retry={"max_attempts": 3, "initial_delay": "100ms"}),
            ],
        }
    )
    run_id = env.cli.start("e2e-typed", "abc")
    run = env.cli.wait_status(run_id, {"completed", "failed"})
    assert run["status"] == "failed"
    assert run["steps"]["s"]["attempts"] == 1
    error = run["steps"]["s"]["error"]
    assert "input does not match int" in error, error
    assert env.journal.count(run_id, "s") == 0  # the handler never ran


def test_a_timed_out_attempt_is_retried_and_its_late_result_ignored(env):
    env.register(
        {
            "name": "e2e-timeout",
            "steps": [
                step("s", "slow-first", timeout="1s", retry={"max_attempts": 2, "initial_delay": "100ms"}),
            ],
        }
    )
    run_id = env.cli.start("e2e-timeout")
    run = env.cli.wait_status(run_id, {"completed", "failed"})
    assert run["status"] == "completed", run
    assert run["steps"]["s"]["attempts"] == 2
    assert run["output"] == "result of attempt 2"
    failed = [e for e in env.cli.events(run_id) if e["type"] == "step.failed"]
    assert len(failed) == 1 and failed[0]["attempt"] == 1
    assert "step timeout exceeded (1s)" in str(failed[0]["payload"])

    # Attempt 1 still finishes (about 3 s after it began) and reports: nothing changes.
    wait_for(
        lambda: [e for e in env.journal.executions(run_id) if e.attempt == 1 and e.end],
        10,
        "attempt 1 to finish its sleep",
    )
    late_seen = lambda: any(e["type"] == "step.completed" and e["attempt"] == 1 for e in env.cli.events(run_id)) or None
    try:  # the late report may be recorded, or dropped: either way the run must not change
        wait_for(late_seen, 2, "the late report")
    except AssertionError:
        pass
    again = env.cli.status(run_id)
    assert (again["status"], again["output"], again["steps"]["s"]["attempts"]) == (
        "completed",
        "result of attempt 2",
        2,
    )
    assert [e["type"] for e in env.cli.events(run_id)].count("workflow.completed") == 1
    assert env.cli("run", "output", run_id, "--json").stdout == '"result of attempt 2"\n'


def test_cancel_stops_a_blocked_run_and_a_second_cancel_is_refused(env):
    env.register(
        {
            "name": "e2e-cancel",
            "steps": [
                step("blocked", "blocker"),
                step("next", "after", ["blocked"]),
            ],
        }
    )
    run_id = env.cli.start("e2e-cancel")
    wait_for(lambda: env.journal.count(run_id, "blocked"), 10, "the blocked step to begin")
    cancelled = env.cli("run", "cancel", run_id)
    assert cancelled.stdout == f"Run {run_id} cancelled\n"
    run = env.cli.wait_status(run_id, {"cancelled"})
    assert {s: (v["status"], v["attempts"]) for s, v in run["steps"].items()} == {
        "blocked": ("cancelled", 1),
        "next": ("cancelled", 0),
    }
    assert run["error"] == "cancelled by user"
    assert env.journal.count(run_id, "next") == 0
    events = [e["type"] for e in env.cli.events(run_id)]
    assert events == ["workflow.started", "step.queued", "step.started", "workflow.cancelled"]

    again = env.cli("run", "cancel", run_id, check=False)
    assert again.returncode == 1
    assert again.stderr == f"error: cannot cancel run {run_id}: it is cancelled\n"
    assert again.stdout == ""
    as_json = env.cli("run", "cancel", run_id, "--json", check=False)
    assert as_json.returncode == 1
    assert json.loads(as_json.stderr) == {"error": f"cannot cancel run {run_id}: it is cancelled"}
