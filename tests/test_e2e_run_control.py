"""Run control end to end: cancel, pause/resume, wait, inspect, delete and list,
through the real CLI against `dagnats serve` and a real worker process.

One engine and one worker serve the module; each test has its own workflow
names. Gated handlers (`await gate(ctx)`) hold a step running until the test
opens its gate, and every handler journals its executions outside NATS.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from e2e_support import GATE_HANDLERS, CliCall, module_env, open_gate, step, wait_for, wait_inbox_drained

pytestmark = pytest.mark.e2e

HANDLERS = (
    GATE_HANDLERS
    + """
from typing import Any


@w.task("rc-echo")
def rc_echo(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin", input=data)
    return data


@w.task("rc-gated")
async def rc_gated(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin", input=data)
    await gate(ctx)
    journal(ctx, "end")
    return f"{ctx.step_id} passed its gate"


@w.task("rc-refuse")
def rc_refuse(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    raise Permanent(f"{ctx.step_id} refuses")
"""
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with module_env(tmp_path_factory.mktemp("run-control"), HANDLERS, max_concurrent=32) as env:
        yield env


def statuses(run: dict) -> dict[str, str]:
    return {sid: s["status"] for sid, s in run["steps"].items()}


def refused(result, message: str) -> None:
    """A command refused with exit 1, nothing on stdout and `message` on stderr."""
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")


# ---- cancel --------------------------------------------------------------------------------


def test_cancel_cancels_pending_steps_and_ignores_the_running_tasks_late_result(env):
    env.register(
        {
            "name": "rc-cancel",
            "steps": [step("a", "rc-gated"), step("b", "rc-echo", ["a"]), step("c", "rc-echo", ["b"])],
        }
    )
    run_id = env.cli.start("rc-cancel", {"n": 1})
    env.running(run_id, "a")

    assert env.cli("run", "cancel", run_id).stdout == f"Run {run_id} cancelled\n"
    run = env.wait(run_id)
    assert (run["status"], run["error"]) == ("cancelled", "cancelled by user")
    assert statuses(run) == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}

    open_gate(env.journal, run_id, "a")  # the handler finishes and reports after the cancel
    wait_for(lambda: env.rows(run_id, "a", phase="end"), 10, "a's handler to finish")
    wait_inbox_drained(env.cli)
    later = env.cli.status(run_id)
    assert (later["status"], later["output"], statuses(later)) == (
        "cancelled",
        None,
        {"a": "cancelled", "b": "cancelled", "c": "cancelled"},
    )
    assert env.rows(run_id, "b") == env.rows(run_id, "c") == []
    types = [e["type"] for e in env.cli.events(run_id)]
    assert types[-1] == "workflow.cancelled" and "step.completed" not in types, types


def test_cancel_of_a_finished_run_is_refused(env):
    env.register({"name": "rc-cancel-done", "steps": [step("a", "rc-echo")]})
    run_id = env.cli.start("rc-cancel-done", "x")
    assert env.wait(run_id)["status"] == "completed"
    refused(env.cli("run", "cancel", run_id, check=False), f"cannot cancel run {run_id}: it is completed")
    assert env.cli.status(run_id)["status"] == "completed"
    missing = env.cli("run", "cancel", "0" * 32, check=False)
    refused(missing, f"run '{'0' * 32}' not found")


# ---- pause and resume -------------------------------------------------------------------------


def test_pause_lets_the_running_step_finish_dispatches_nothing_and_resume_completes(env):
    env.register({"name": "rc-pause", "steps": [step("a", "rc-gated"), step("b", "rc-echo", ["a"])]})
    run_id = env.cli.start("rc-pause", {"n": 2})
    env.running(run_id, "a")

    paused_out = env.cli("run", "pause", run_id).stdout
    assert paused_out == f"Run {run_id} pausing (in-flight steps finish first)\n"
    pausing = env.cli.wait_status(run_id, "pausing")
    assert statuses(pausing) == {"a": "running", "b": "pending"}

    open_gate(env.journal, run_id, "a")
    paused = env.cli.wait_status(run_id, "paused")
    assert statuses(paused) == {"a": "completed", "b": "pending"}
    time.sleep(1.0)  # nothing may be dispatched while paused
    assert env.rows(run_id, "b") == []
    still = env.cli.status(run_id)
    assert (still["status"], statuses(still)) == ("paused", {"a": "completed", "b": "pending"})

    assert env.cli("run", "resume", run_id).stdout == f"Run {run_id} resumed\n"
    run = env.wait(run_id)
    assert (run["status"], run["output"]) == ("completed", "a passed its gate"), env.diagnose()
    assert len(env.rows(run_id, "b")) == 1
    types = [e["type"] for e in env.cli.events(run_id)]
    assert types.index("workflow.paused") < types.index("workflow.resumed") < len(types) - 1
    assert [t for t in types if t == "step.queued"] == ["step.queued"] * 2


def test_pause_and_resume_are_refused_in_the_wrong_state(env):
    env.register({"name": "rc-pause-refused", "steps": [step("a", "rc-gated"), step("b", "rc-echo", ["a"])]})
    run_id = env.cli.start("rc-pause-refused")
    env.running(run_id, "a")
    refused(env.cli("run", "resume", run_id, check=False), f"cannot resume run {run_id}: it is running")

    env.cli("run", "pause", run_id)
    open_gate(env.journal, run_id, "a")
    env.cli.wait_status(run_id, "paused")
    refused(env.cli("run", "pause", run_id, check=False), f"cannot pause run {run_id}: it is paused")
    as_json = env.cli("run", "pause", run_id, "--json", check=False)
    assert as_json.returncode == 1
    assert json.loads(as_json.stderr) == {"error": f"cannot pause run {run_id}: it is paused"}

    env.cli("run", "resume", run_id)
    assert env.wait(run_id)["status"] == "completed"
    refused(env.cli("run", "pause", run_id, check=False), f"cannot pause run {run_id}: it is completed")
    refused(env.cli("run", "resume", run_id, check=False), f"cannot resume run {run_id}: it is completed")


# ---- wait --------------------------------------------------------------------------------------------


def test_wait_blocks_until_the_run_finishes_and_prints_its_output(env):
    env.register({"name": "rc-wait", "steps": [step("a", "rc-gated"), step("b", "rc-echo", ["a"])]})
    run_id = env.cli.start("rc-wait")
    whole = CliCall(env.cli, "run", "wait", run_id)
    first = CliCall(env.cli, "run", "wait", run_id, "--step", "a", "--json")
    try:
        env.began(run_id, "a")
        time.sleep(0.5)
        assert whole.running and first.running, "run wait returned before the run finished"
        open_gate(env.journal, run_id, "a")
        step_done = first.result(15)
        run_done = whole.result(15)
    finally:
        whole.stop()
        first.stop()
    assert step_done.returncode == 0, step_done
    assert json.loads(step_done.stdout) == {
        "run_id": run_id,
        "step": "a",
        "status": "completed",
        "output": "a passed its gate",
        "error": None,
    }
    assert (run_done.returncode, run_done.stdout, run_done.stderr) == (0, '"a passed its gate"\n', "")
    assert env.cli.status(run_id)["status"] == "completed"
    # A finished run: wait returns at once.
    again = env.cli("run", "wait", run_id, "--json", json=True)
    assert (again["status"], again["output"]) == ("completed", "a passed its gate")


def test_wait_for_a_step_exits_non_zero_when_the_step_failed_or_was_skipped(env):
    env.register(
        {
            "name": "rc-wait-fail",
            "steps": [step("ok", "rc-echo"), step("bad", "rc-refuse", ["ok"]), step("after", "rc-echo", ["bad"])],
        }
    )
    run_id = env.cli.start("rc-wait-fail", "in")
    failed = env.cli("run", "wait", run_id, "--step", "bad", "--timeout", "15", check=False, timeout=30)
    assert (failed.returncode, failed.stdout) == (1, ""), failed
    assert failed.stderr == "error: step bad is failed: bad refuses\n"

    env.register(
        {
            "name": "rc-wait-skip",
            "steps": [
                step("ok", "rc-echo"),
                step("maybe", "rc-echo", ["ok"], skip_if={"step_id": "ok", "field": "go", "op": "==", "value": False}),
            ],
        }
    )
    skip_id = env.cli.start("rc-wait-skip", {"go": False})
    skipped = env.cli("run", "wait", skip_id, "--step", "maybe", "--json", "--timeout", "15", check=False, timeout=30)
    assert skipped.returncode == 1, skipped
    assert json.loads(skipped.stdout) == {
        "run_id": skip_id,
        "step": "maybe",
        "status": "skipped",
        "output": None,
        "error": "skip_if ok.go == False",
    }
    ok = env.cli("run", "wait", skip_id, "--step", "ok", check=False)
    assert (ok.returncode, json.loads(ok.stdout)) == (0, {"go": False})
    whole = env.cli("run", "wait", run_id, check=False)
    refused(whole, f"run {run_id} is failed: step bad failed: bad refuses")


def test_wait_prints_nothing_on_stderr_when_the_run_or_step_completed(env):
    env.register({"name": "rc-wait-quiet", "steps": [step("a", "rc-echo")]})
    run_id = env.cli.start("rc-wait-quiet", "quiet")
    assert env.wait(run_id)["status"] == "completed"
    for args in ((), ("--step", "a"), ("--json",)):
        done = env.cli("run", "wait", run_id, *args, check=False)
        assert (done.returncode, done.stderr) == (0, ""), (args, done.stderr)


def test_wait_with_a_timeout_exits_non_zero_when_the_run_does_not_finish(env):
    env.register({"name": "rc-wait-timeout", "steps": [step("a", "rc-gated")]})
    run_id = env.cli.start("rc-wait-timeout")
    began = time.monotonic()
    result = env.cli("run", "wait", run_id, "--timeout", "1", check=False)
    took = time.monotonic() - began
    refused(result, f"run {run_id} did not finish within 1s")
    assert took >= 1.0  # it waited the whole timeout (how much longer depends on the machine)
    step_wait = env.cli("run", "wait", run_id, "--step", "a", "--timeout", "0.5", check=False)
    refused(step_wait, f"step a of run {run_id} did not finish within 0.5s")
    assert env.cli.status(run_id)["status"] == "running"
    open_gate(env.journal, run_id, "a")
    assert env.wait(run_id)["status"] == "completed"


# ---- inspect --------------------------------------------------------------------------------------------


def test_inspect_shows_steps_attempts_timings_errors_and_blockers(env):
    env.register(
        {
            "name": "rc-inspect",
            "steps": [
                step("a", "rc-gated"),
                step("b", "rc-echo", ["a"]),
                step("c", "rc-echo", ["a", "b"]),
                step("extra", "rc-refuse", optional=True),
            ],
        }
    )
    run_id = env.cli.start("rc-inspect")
    env.running(run_id, "a")
    wait_for(lambda: env.cli.status(run_id)["steps"]["extra"]["status"] == "failed", 10, "extra to fail")
    held_since = time.time()

    live = env.cli("run", "inspect", run_id, json=True)
    assert (live["run_id"], live["status"]) == (run_id, "running")
    assert live["blockers"] == {"b": ["a"], "c": ["a", "b"]}
    a = live["steps"]["a"]
    assert (a["status"], a["attempts"], a["exec_seconds"]) == ("running", 1, None)
    assert 0 <= a["queue_seconds"] < 5
    assert (live["steps"]["b"]["status"], live["steps"]["b"]["queue_seconds"]) == ("pending", None)
    assert (live["steps"]["extra"]["status"], live["steps"]["extra"]["error"]) == ("failed", "extra refuses")

    human = env.cli("run", "inspect", run_id).stdout
    assert f"Run:      {run_id}" in human and "Status:   running" in human
    assert re.search(r"^STEP +STATUS +ATTEMPTS +QUEUED +RAN +DETAIL$", human, re.MULTILINE), human
    assert re.search(r"^a +running +1 +[\d.]+m?s +-$", human, re.MULTILINE), human
    assert re.search(r"^extra +failed +1 +.* extra refuses$", human, re.MULTILINE), human
    assert "Blocked:\n  b waits on a\n  c waits on a, b" in human, human

    time.sleep(max(0.0, 0.5 - (time.time() - held_since)))
    open_gate(env.journal, run_id, "a")
    assert env.wait(run_id)["status"] == "completed"
    done = env.cli("run", "inspect", run_id, json=True)
    assert done["blockers"] == {}
    assert {s: v["status"] for s, v in done["steps"].items()} == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
        "extra": "failed",
    }
    assert done["steps"]["a"]["exec_seconds"] >= 0.5  # held at its gate at least that long
    assert all(v["queue_seconds"] >= 0 and v["exec_seconds"] >= 0 for v in done["steps"].values())
    assert "Blocked:" not in env.cli("run", "inspect", run_id).stdout


# ---- delete -------------------------------------------------------------------------------------------


def test_delete_refuses_a_running_run_and_removes_a_finished_one(env):
    env.register({"name": "rc-delete", "steps": [step("a", "rc-gated")]})
    run_id = env.cli.start("rc-delete")
    env.began(run_id, "a")
    refused(env.cli("run", "delete", run_id, check=False), f"cannot delete run {run_id}: it is running")

    open_gate(env.journal, run_id, "a")
    assert env.wait(run_id)["status"] == "completed"
    wait_for(
        lambda: [r for r in env.cli("run", "list", "--workflow", "rc-delete", json=True) if r["run_id"] == run_id],
        5,
        "the run to be listed",
    )
    assert env.cli("run", "delete", run_id).stdout == f"Run {run_id} deleted\n"

    refused(env.cli("run", "status", run_id, check=False), f"run {run_id!r} not found")
    refused(env.cli("run", "events", run_id, check=False), f"run {run_id!r} not found")
    assert env.cli("run", "list", "--workflow", "rc-delete", json=True) == []
    refused(env.cli("run", "delete", run_id, check=False), f"run {run_id!r} not found")


# ---- list ------------------------------------------------------------------------------------------------


def test_list_filters_by_workflow_and_status_and_limits_the_count(env):
    env.register(
        {
            "name": "rc-list-a",
            "steps": [
                step("a", "rc-echo"),
                step("b", "rc-refuse", ["a"], skip_if={"step_id": "a", "field": "ok", "op": "==", "value": True}),
            ],
        }
    )
    env.register({"name": "rc-list-b", "steps": [step("a", "rc-echo")]})
    made = []
    for workflow, data in (
        ("rc-list-a", {"ok": True}),
        ("rc-list-a", {"ok": False}),
        ("rc-list-a", {"ok": True}),
        ("rc-list-b", {"ok": True}),
    ):
        made.append(env.cli.start(workflow, data))
        env.wait(made[-1])
    a_ok1, a_failed, a_ok2, b_ok = made

    def listed(*args: str, count: int) -> list[dict]:
        """`run list ARGS --json` once it shows `count` runs (the snapshot of a finished run lands a moment later)."""

        def enough():
            runs = env.cli("run", "list", *args, json=True)
            return runs if len(runs) >= count else None

        return wait_for(enough, 5, f"run list {' '.join(args)} to show {count} runs")

    in_a = listed("--workflow", "rc-list-a", count=3)
    assert [r["run_id"] for r in in_a] == [a_ok2, a_failed, a_ok1]  # newest first
    assert {r["workflow"] for r in in_a} == {"rc-list-a"}
    assert [r["status"] for r in in_a] == ["completed", "failed", "completed"]
    failed = listed("--workflow", "rc-list-a", "--status", "failed", count=1)
    assert [(r["run_id"], r["status"], r["steps_done"], r["steps_total"]) for r in failed] == [
        (a_failed, "failed", 1, 2)
    ]
    assert [r["run_id"] for r in listed("--workflow", "rc-list-a", "--limit", "2", count=2)] == [a_ok2, a_failed]
    assert [r["run_id"] for r in listed("--workflow", "rc-list-b", count=1)] == [b_ok]
    assert env.cli("run", "list", "--workflow", "rc-list-b", "--status", "failed", json=True) == []
    completed = [r["run_id"] for r in listed("--status", "completed", count=3)]
    assert {a_ok1, a_ok2, b_ok} <= set(completed) and a_failed not in completed

    human = env.cli("run", "list", "--workflow", "rc-list-a", "--limit", "2").stdout.splitlines()
    assert re.fullmatch(r"RUN_ID +WORKFLOW +STATUS +CREATED +STEPS", human[0]), human
    assert [line.split()[:3] for line in human[1:]] == [
        [a_ok2, "rc-list-a", "completed"],
        [a_failed, "rc-list-a", "failed"],
    ]
    assert env.cli("run", "list", "--workflow", "rc-list-none").stdout == "No runs.\n"
