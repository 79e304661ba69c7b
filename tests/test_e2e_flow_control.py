"""Flow control end to end: the real CLI, `dagnats serve` and worker processes.

The end-to-end versions of tests/test_flow_control.py: skip_if, on_failure,
sagas, schemas, deadlines, cancel_on, idempotency keys, singletons, worker
groups, sticky workers, input wiring, optional steps and error truncation.
One engine and one worker process serve the module (each test has its own
workflow names); tests that need particular workers start their own. Every
handler journals its executions to a file outside NATS, so the tests count
what really ran, with which input, on which worker and when.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from e2e_support import (
    GATE_HANDLERS,
    Env,
    Journal,
    WorkerProc,
    module_env,
    open_gate,
    restart_serve,
    step,
    wait_for,
    wait_inbox_drained,
)

pytestmark = pytest.mark.e2e

HANDLERS = (
    GATE_HANDLERS
    + '''
from typing import Any


@w.task("fc-echo")
def fc_echo(ctx: TaskContext, data: Any) -> Any:
    """Returns its input, or the input's "reply" when it has one."""
    journal(ctx, "begin", input=data)
    if isinstance(data, dict) and "reply" in data:
        return data["reply"]
    return data


@w.task("fc-maybe-fail")
def fc_maybe_fail(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin", input=data)
    if isinstance(data, dict) and data.get("fail"):
        raise Permanent(data.get("message", "refused"))
    return data


@w.task("fc-record")
def fc_record(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin", input=data)
    return f"{ctx.step_id} done"


@w.task("fc-slow")
async def fc_slow(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    await asyncio.sleep(float(data.get("sleep", 0)) if isinstance(data, dict) else 0)
    journal(ctx, "end")
    return f"{ctx.step_id} slept"


@w.task("fc-gated")
async def fc_gated(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin", input=data)
    await gate(ctx)
    journal(ctx, "end")
    return data


@w.task("fc-undo")
def fc_undo(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin", input=data)
    time.sleep(0.3)
    journal(ctx, "end")
    return f"undid {data['original_step']}"


@w.task("fc-undo-broken")
def fc_undo_broken(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin", input=data)
    raise RuntimeError(f"cannot undo {data['original_step']}")


@w.task("fc-big-error")
def fc_big_error(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin")
    raise Permanent("x" + "\\u00fc" * 5000)
'''
)

# Handlers for the tests that start workers of their own; TASK is replaced.
OWN_WORKER_HANDLERS = (
    GATE_HANDLERS
    + """
from typing import Any


@w.task("TASK")
async def own_step(ctx: TaskContext, data: Any) -> str:
    journal(ctx, "begin", worker=ctx.worker_id)
    data = data if isinstance(data, dict) else {}
    if ctx.step_id in data.get("hold", []):
        await gate(ctx)
    await asyncio.sleep(float(data.get("sleep", 0)))
    journal(ctx, "end", worker=ctx.worker_id)
    return ctx.worker_id
"""
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Slots to spare: some tests leave handlers waiting at their gates.
    with module_env(tmp_path_factory.mktemp("flow-control"), HANDLERS, max_concurrent=32) as env:
        yield env


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def statuses(run: dict) -> dict[str, str]:
    return {sid: s["status"] for sid, s in run["steps"].items()}


# ---- skip_if ---------------------------------------------------------------------------


def test_skip_if_skips_on_a_numeric_match_and_not_on_a_missing_field_or_a_string(env):
    env.register(
        {
            "name": "fc-skip-if",
            "steps": [
                step("check", "fc-echo"),
                step(
                    "notify",
                    "fc-record",
                    ["check"],
                    skip_if={"step_id": "check", "field": "score", "op": ">=", "value": 50},
                ),
                step("done", "fc-record", ["notify"]),
            ],
        }
    )
    inputs = {"match": {"score": 90}, "below": {"score": 10}, "missing": {"other": 90}, "string": {"score": "90"}}
    runs = {name: env.cli.start("fc-skip-if", data) for name, data in inputs.items()}
    final = {name: env.wait(run_id) for name, run_id in runs.items()}

    assert {name: (run["status"], run["steps"]["notify"]["status"]) for name, run in final.items()} == {
        "match": ("completed", "skipped"),
        "below": ("completed", "completed"),
        "missing": ("completed", "completed"),
        "string": ("completed", "completed"),
    }, env.diagnose()
    assert final["match"]["steps"]["notify"]["skip_reason"] == "skip_if check.score >= 50"
    executed = {name: (len(env.rows(run_id, "notify")), len(env.rows(run_id, "done"))) for name, run_id in runs.items()}
    assert executed == {"match": (0, 1), "below": (1, 1), "missing": (1, 1), "string": (1, 1)}
    # The dependent of the skipped step still ran; a skipped step passes no output on.
    assert env.rows(runs["match"], "done")[0]["input"] is None
    assert env.rows(runs["below"], "done")[0]["input"] == "notify done"


# ---- on_failure --------------------------------------------------------------------------


def test_on_failure_handler_gets_the_failure_and_recovers_the_step(env):
    env.register(
        {
            "name": "fc-on-failure",
            "steps": [
                step(
                    "charge", "fc-maybe-fail", on_failure="report", retry={"max_attempts": 2, "initial_delay": "100ms"}
                ),
                step("ship", "fc-record", ["charge"]),
                step("report", "fc-record"),
            ],
        }
    )
    failing = {"fail": True, "message": "card declined", "amount": 5}
    failed_id = env.cli.start("fc-on-failure", failing)
    ok_id = env.cli.start("fc-on-failure", {"amount": 5})
    failed, ok = env.wait(failed_id), env.wait(ok_id)

    assert failed["status"] == "completed", env.diagnose()
    assert statuses(failed) == {"charge": "recovered", "ship": "skipped", "report": "completed"}
    assert [r["input"] for r in env.rows(failed_id, "report")] == [
        {"failed_step": "charge", "error": "card declined", "attempts": 1, "input": failing}
    ]
    assert len(env.rows(failed_id, "charge")) == 1  # Permanent: no retry despite the policy
    assert env.rows(failed_id, "ship") == []

    assert ok["status"] == "completed"
    assert statuses(ok) == {"charge": "completed", "ship": "completed", "report": "pending"}
    assert env.rows(ok_id, "report") == []  # the handler never runs when nothing fails
    assert len(env.rows(ok_id, "ship")) == 1


# ---- compensation (saga) ------------------------------------------------------------------


def test_a_saga_compensates_completed_steps_one_at_a_time_in_reverse_completion_order(env):
    # book_flight completes after book_hotel (it sleeps): reverse completion order
    # (flight, then hotel) differs from reverse definition order (hotel, then flight).
    env.register(
        {
            "name": "fc-saga",
            "steps": [
                step("book_flight", "fc-slow", compensate="cancel_flight", input={"sleep": 0.6}),
                step("book_hotel", "fc-slow", compensate="cancel_hotel", input={"sleep": 0}),
                step(
                    "charge",
                    "fc-maybe-fail",
                    ["book_flight", "book_hotel"],
                    compensate="refund",
                    input={"fail": True, "message": "insufficient funds"},
                ),
                step("cancel_flight", "fc-undo"),
                step("cancel_hotel", "fc-undo"),
                step("refund", "fc-undo"),
            ],
        }
    )
    run_id = env.cli.start("fc-saga")
    run = env.wait(run_id)

    assert run["status"] == "compensated", env.diagnose()
    assert run["error"] == "step charge failed: insufficient funds; compensated"
    assert statuses(run) == {
        "book_flight": "completed",
        "book_hotel": "completed",
        "charge": "failed",
        "cancel_flight": "completed",
        "cancel_hotel": "completed",
        "refund": "pending",
    }
    assert run["steps"]["book_hotel"]["finished_at"] < run["steps"]["book_flight"]["finished_at"]
    begun = env.rows(run_id, phase="begin")
    undo = [r for r in begun if r["step"] in ("cancel_flight", "cancel_hotel", "refund")]
    assert [r["step"] for r in undo] == ["cancel_flight", "cancel_hotel"]
    assert [r["input"] for r in undo] == [
        {
            "original_step": "book_flight",
            "original_output": "book_flight slept",
            "trigger_step": "charge",
            "trigger_error": "insufficient funds",
        },
        {
            "original_step": "book_hotel",
            "original_output": "book_hotel slept",
            "trigger_step": "charge",
            "trigger_error": "insufficient funds",
        },
    ]
    first_end = env.rows(run_id, "cancel_flight", phase="end")[0]["t"]
    assert undo[1]["t"] >= first_end, "the second compensation began before the first one ended"


def test_a_compensation_failing_after_its_retries_ends_compensate_failed(env):
    env.register(
        {
            "name": "fc-saga-broken",
            "steps": [
                step("s1", "fc-echo", compensate="u1"),
                step("s2", "fc-echo", ["s1"], compensate="u2"),
                step("s3", "fc-maybe-fail", ["s2"], input={"fail": True, "message": "boom"}),
                step("u1", "fc-undo"),
                step("u2", "fc-undo-broken", retry={"max_attempts": 1, "initial_delay": "100ms"}),
            ],
        }
    )
    run_id = env.cli.start("fc-saga-broken", {"order": 1})
    run = env.wait(run_id)

    assert run["status"] == "compensate_failed", env.diagnose()
    assert run["error"] == "compensation step u2 failed: RuntimeError: cannot undo s2"
    assert [r["attempt"] for r in env.rows(run_id, "u2")] == [1, 2]
    assert env.rows(run_id, "u1") == []  # the chain stops at the failed compensation


def test_cancelling_a_run_does_not_compensate(env):
    env.register(
        {
            "name": "fc-saga-cancel",
            "steps": [
                step("s1", "fc-echo", compensate="u1"),
                step("s2", "fc-gated", ["s1"], compensate="u2"),
                step("u1", "fc-undo"),
                step("u2", "fc-undo"),
            ],
        }
    )
    run_id = env.cli.start("fc-saga-cancel", {"order": 2})
    env.began(run_id, "s2")
    env.cli("run", "cancel", run_id)
    run = env.wait(run_id)
    open_gate(env.journal, run_id, "s2")
    wait_for(lambda: env.rows(run_id, "s2", phase="end"), 10, "s2 to finish")
    wait_inbox_drained(env.cli)

    run = env.cli.status(run_id)
    assert run["status"] == "cancelled"
    assert statuses(run) == {"s1": "completed", "s2": "cancelled", "u1": "cancelled", "u2": "cancelled"}
    assert env.rows(run_id, "u1") == env.rows(run_id, "u2") == []
    types = [e["type"] for e in env.cli.events(run_id)]
    assert not [t for t in types if "compensat" in t], types


# ---- schemas ----------------------------------------------------------------------------------


def test_input_failing_the_schema_is_refused_and_output_failing_it_fails_the_run(env):
    env.register(
        {
            "name": "fc-schemas",
            "steps": [step("a", "fc-echo")],
            "input_schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
            "output_schema": {"type": "string"},
        }
    )
    missing = env.cli("run", "start", "fc-schemas", '{"m": 1}', check=False)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "error: invalid input: 'n' is a required property\n"
    wrong = env.cli("run", "start", "fc-schemas", '{"n": "one"}', "--json", check=False)
    assert wrong.returncode == 1
    assert json.loads(wrong.stderr) == {"error": "invalid input: 'one' is not of type 'integer' (at n)"}

    good_id = env.cli.start("fc-schemas", {"n": 1, "reply": "fine"})
    bad_id = env.cli.start("fc-schemas", {"n": 2, "reply": 42})
    good, bad = env.wait(good_id), env.wait(bad_id)
    assert (good["status"], good["output"]) == ("completed", "fine"), env.diagnose()
    assert bad["status"] == "failed"
    assert bad["error"] == "output does not match output_schema: 42 is not of type 'string'"

    # Only the two accepted starts made runs.
    def two_listed():
        runs = env.cli("run", "list", "--workflow", "fc-schemas", json=True)
        return runs if len(runs) >= 2 else None

    listed = wait_for(two_listed, 5, "two runs listed")
    assert sorted(r["run_id"] for r in listed) == sorted([good_id, bad_id])


# ---- error truncation --------------------------------------------------------------------------


def test_a_long_step_error_is_cut_in_the_status_and_kept_whole_in_the_events(env):
    env.register({"name": "fc-error-bytes", "max_step_error_bytes": 100, "steps": [step("s", "fc-big-error")]})
    run_id = env.cli.start("fc-error-bytes")
    run = env.wait(run_id)
    full = "x" + "\u00fc" * 5000  # 10 001 bytes of UTF-8

    assert run["status"] == "failed", env.diagnose()
    cut = run["steps"]["s"]["error"]
    assert len(cut.encode()) <= 100
    assert cut == "x" + "\u00fc" * 49  # 99 bytes: the 100th would split a character
    assert run["error"] == f"step s failed: {cut}"
    failed = [e for e in env.cli.events(run_id) if e["type"] == "step.failed"]
    assert [e["payload"]["error"] for e in failed] == [full]


# ---- explicit input wiring, optional steps, after_any ---------------------------------------------


def test_input_references_deliver_the_resolved_object(env):
    env.register(
        {
            "name": "fc-wiring",
            "steps": [
                step("user", "fc-echo"),
                step(
                    "mail",
                    "fc-record",
                    ["user"],
                    input={
                        "to": {"$ref": "user.email"},
                        "n": 1,
                        "all": {"$ref": "user"},
                        "nope": {"$ref": "user.phone"},
                    },
                ),
            ],
        }
    )
    run_id = env.cli.start("fc-wiring", {"email": "a@b.c", "name": "A"})
    run = env.wait(run_id)
    assert run["status"] == "completed", env.diagnose()
    assert [r["input"] for r in env.rows(run_id, "mail")] == [
        {"to": "a@b.c", "n": 1, "all": {"email": "a@b.c", "name": "A"}, "nope": None}
    ]


def test_a_reference_to_a_failed_optional_step_uses_its_default_or_skips_and_cascades(env):
    env.register(
        {
            "name": "fc-wiring-default",
            "steps": [
                step("extra", "fc-maybe-fail", optional=True),
                step("with_default", "fc-record", ["extra"], input={"value": {"$ref": "extra.value", "default": 0}}),
                step("no_default", "fc-record", ["extra"], input={"value": {"$ref": "extra.value"}}),
                step("after_no_default", "fc-record", ["no_default"]),
            ],
        }
    )
    failed_id = env.cli.start("fc-wiring-default", {"fail": True, "message": "no extra today"})
    ok_id = env.cli.start("fc-wiring-default", {"value": 7})
    failed, ok = env.wait(failed_id), env.wait(ok_id)

    assert failed["status"] == "completed", env.diagnose()
    assert statuses(failed) == {
        "extra": "failed",
        "with_default": "completed",
        "no_default": "skipped",
        "after_no_default": "skipped",
    }
    assert [r["input"] for r in env.rows(failed_id, "with_default")] == [{"value": 0}]
    assert env.rows(failed_id, "no_default") == env.rows(failed_id, "after_no_default") == []

    assert ok["status"] == "completed"
    assert [r["input"] for r in env.rows(ok_id, "with_default")] == [{"value": 7}]
    assert [r["input"] for r in env.rows(ok_id, "no_default")] == [{"value": 7}]
    assert len(env.rows(ok_id, "after_no_default")) == 1


def test_an_optional_failure_does_not_fail_the_run_and_after_any_cleanup_runs(env):
    env.register(
        {
            "name": "fc-optional",
            "steps": [
                step("extra", "fc-maybe-fail", optional=True),
                step("uses_extra", "fc-record", ["extra"]),
                step("cleanup", "fc-record", after_any=["extra"]),
            ],
        }
    )
    run_id = env.cli.start("fc-optional", {"fail": True, "message": "extra is down"})
    run = env.wait(run_id)

    assert run["status"] == "completed", env.diagnose()
    assert run["error"] is None
    assert statuses(run) == {"extra": "failed", "uses_extra": "skipped", "cleanup": "completed"}
    assert run["steps"]["extra"]["error"] == "extra is down"
    cleanup = env.rows(run_id, "cleanup")
    assert len(cleanup) == 1 and cleanup[0]["t"] > env.rows(run_id, "extra")[0]["t"]
    assert env.rows(run_id, "uses_extra") == []


# ---- workflow timeout ------------------------------------------------------------------------------


def test_a_run_past_its_workflow_timeout_is_cancelled_and_the_late_result_ignored(env):
    env.register({"name": "fc-deadline", "timeout": "1s", "steps": [step("a", "fc-slow", input={"sleep": 2.5})]})
    run_id = env.cli.start("fc-deadline")
    run = env.wait(run_id)

    assert (run["status"], run["error"]) == ("cancelled", "deadline exceeded"), env.diagnose()
    assert 1.0 <= seconds_between(run["created_at"], run["completed_at"]) < 2.0
    assert env.rows(run_id, "a", phase="end") == []  # cancelled while the handler still slept
    wait_for(lambda: env.rows(run_id, "a", phase="end"), 10, "the slow handler to finish")
    wait_inbox_drained(env.cli)
    later = env.cli.status(run_id)
    assert (later["status"], later["output"], later["steps"]["a"]["status"]) == ("cancelled", None, "cancelled")
    types = [e["type"] for e in env.cli.events(run_id)]
    assert "step.completed" not in types and types.count("workflow.cancelled") == 1, types


# ---- cancel_on -------------------------------------------------------------------------------------------


def test_a_matching_event_cancels_only_the_run_whose_input_it_matches(env):
    # No worker serves fc-idle: the runs wait on their first step until cancelled.
    env.register(
        {
            "name": "fc-cancel-on",
            "steps": [step("a", "fc-idle")],
            "cancel_on": [
                {"event": "fc_order_cancelled", "match": {"left": "order_id", "op": "eq", "right": "input.order_id"}}
            ],
        }
    )
    runs = {order: env.cli.start("fc-cancel-on", {"order_id": order}) for order in ("o-1", "o-2", "o-3")}
    for run_id in runs.values():
        env.cli.wait_status(run_id, "running")

    published = env.cli("event", "publish", "fc_order_cancelled", '{"order_id": "o-9"}')
    assert published.stdout.startswith("Event published: fc_order_cancelled (seq ")
    env.cli("event", "publish", "fc_order_cancelled", '{"order_id": "o-3"}')
    # Events are correlated in order: once o-3's run is cancelled, o-9 was handled too.
    probe = env.cli.wait_status(runs["o-3"], "cancelled", timeout=10)
    assert probe["error"] == "cancelled by event fc_order_cancelled"
    assert [env.cli.status(runs[o])["status"] for o in ("o-1", "o-2")] == ["running", "running"]

    env.cli("event", "publish", "fc_order_cancelled", '{"order_id": "o-1"}')
    cancelled = env.cli.wait_status(runs["o-1"], "cancelled", timeout=10)
    assert cancelled["error"] == "cancelled by event fc_order_cancelled"
    assert cancelled["steps"]["a"]["status"] == "cancelled"
    assert env.cli.status(runs["o-2"])["status"] == "running"
    env.cli("run", "cancel", runs["o-2"])


# ---- singleton -------------------------------------------------------------------------------------------


def test_singleton_skip_refuses_a_second_active_run_for_the_same_key(env):
    env.register(
        {"name": "fc-single-skip", "singleton": {"mode": "skip", "key": "account"}, "steps": [step("a", "fc-gated")]}
    )
    first = env.cli.start("fc-single-skip", {"account": "x"})
    refused = env.cli("run", "start", "fc-single-skip", '{"account": "x"}', check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"error: workflow 'fc-single-skip' already has an active run for key 'x': {first} "
        "(singleton mode skip refuses a second one)\n"
    )
    other_key = env.cli.start("fc-single-skip", {"account": "y"})
    listed = env.cli("run", "list", "--workflow", "fc-single-skip", json=True)
    assert sorted(r["run_id"] for r in listed) == sorted([first, other_key])

    open_gate(env.journal, first, "a")
    assert env.wait(first)["status"] == "completed"
    again = env.cli.start("fc-single-skip", {"account": "x"})  # the lock frees when its run ends
    for run_id in (other_key, again):
        open_gate(env.journal, run_id, "a")
        assert env.wait(run_id)["status"] == "completed", env.diagnose()


def test_singleton_cancel_replaces_the_active_run(env):
    env.register({"name": "fc-single-cancel", "singleton": {"mode": "cancel"}, "steps": [step("a", "fc-gated")]})
    old = env.cli.start("fc-single-cancel", {"n": 1})
    env.began(old, "a")
    new = env.cli.start("fc-single-cancel", {"n": 2})

    old_run = env.wait(old)
    assert old_run["status"] == "cancelled"
    assert old_run["error"] == f"replaced by run {new} (singleton cancel)"
    env.began(new, "a")
    open_gate(env.journal, new, "a")
    open_gate(env.journal, old, "a")
    new_run = env.wait(new)
    assert (new_run["status"], new_run["output"]) == ("completed", {"n": 2}), env.diagnose()
    wait_for(lambda: env.rows(old, "a", phase="end"), 10, "the replaced run's handler to finish")
    wait_inbox_drained(env.cli)
    assert env.cli.status(old)["status"] == "cancelled"


# ---- worker groups and sticky workers ----------------------------------------------------------------------


def own_worker(tmp_path: Path, url: str, task: str, worker_id: str, extra: str = "", ack_wait: float = 5) -> WorkerProc:
    """A worker of its own (id `worker_id`) for `task`; all of them journal to tmp_path."""
    args = f'worker_id="{worker_id}", max_concurrent=8, drain_timeout=1, ack_wait={ack_wait}{extra}'
    return WorkerProc(
        tmp_path,
        url,
        OWN_WORKER_HANDLERS.replace('"TASK"', json.dumps(task)),
        name=worker_id,
        worker_args=args,
        journal=tmp_path / "journal.jsonl",
    )


def executed_by(env: Env, journal: Journal, run_id: str) -> dict[str, str]:
    return {r["step"]: r["worker"] for r in env.rows(run_id, journal=journal)}


def test_a_worker_group_step_runs_only_on_a_worker_of_that_group(env, tmp_path):
    gpu = own_worker(tmp_path, env.cli.url, "fc-group", "gpu-1", ', groups=["gpu"]')
    plain = own_worker(tmp_path, env.cli.url, "fc-group", "plain-1")
    try:
        gpu.start()
        plain.start()
        env.register(
            {
                "name": "fc-worker-group",
                "steps": [
                    step("prep", "fc-group"),
                    step("render", "fc-group", ["prep"], worker_group="gpu"),
                    step("publish", "fc-group", ["render"]),
                ],
            }
        )
        runs = [env.cli.start("fc-worker-group", {"n": n}) for n in range(4)]
        final = [env.wait(run_id) for run_id in runs]
    finally:
        plain.stop()
        gpu.stop()
    assert [r["status"] for r in final] == ["completed"] * 4, gpu.output + plain.output
    ran = [executed_by(env, gpu.journal, run_id) for run_id in runs]
    assert [sorted(r) for r in ran] == [["prep", "publish", "render"]] * 4
    assert [r["render"] for r in ran] == ["gpu-1"] * 4, ran  # never plain-1, which serves fc-group too
    assert [r["steps"]["render"]["worker_id"] for r in final] == ["gpu-1"] * 4


def test_a_capability_step_runs_only_on_a_worker_offering_them_and_a_superset_will_do(env, tmp_path):
    capable = own_worker(tmp_path, env.cli.url, "fc-cap", "cuda-1", ', capabilities={"cuda", "fast"}')
    plain = own_worker(tmp_path, env.cli.url, "fc-cap", "plain-2")
    try:
        capable.start()
        plain.start()
        env.register(
            {
                "name": "fc-capabilities",
                "steps": [
                    step("prep", "fc-cap"),
                    step("render", "fc-cap", ["prep"], required_capabilities=["cuda"]),
                    step("publish", "fc-cap", ["render"]),
                ],
            }
        )
        runs = [env.cli.start("fc-capabilities", {"n": n}) for n in range(4)]
        final = [env.wait(run_id) for run_id in runs]
    finally:
        plain.stop()
        capable.stop()
    assert [r["status"] for r in final] == ["completed"] * 4, capable.output + plain.output
    ran = [executed_by(env, capable.journal, run_id) for run_id in runs]
    assert [sorted(r) for r in ran] == [["prep", "publish", "render"]] * 4
    assert [r["render"] for r in ran] == ["cuda-1"] * 4, ran  # never plain-2, idle on the same task
    assert [r["steps"]["render"]["worker_id"] for r in final] == ["cuda-1"] * 4


def test_a_capability_step_no_live_worker_offers_waits_visibly_until_one_starts(env, tmp_path):
    plain = own_worker(tmp_path, env.cli.url, "fc-tpu", "tpu-plain")
    capable = own_worker(tmp_path, env.cli.url, "fc-tpu", "tpu-1", ', capabilities=["tpu", "big-mem"]')
    try:
        plain.start()  # a live worker of the task, without the capabilities
        env.register(
            {
                "name": "fc-capabilities-wait",
                "steps": [
                    step("prep", "fc-tpu"),
                    step("train", "fc-tpu", ["prep"], required_capabilities=["tpu", "big-mem"]),
                ],
            }
        )
        run_id = env.cli.start("fc-capabilities-wait")
        wait_for(lambda: env.cli.status(run_id)["steps"]["train"]["status"] == "queued", 10, "train to be queued")

        waiting = env.cli("run", "inspect", run_id, json=True)["steps"]["train"]["waiting"]
        reason = "no live worker of task fc-tpu offers capabilities [big-mem, tpu]"
        assert (waiting["kind"], waiting["description"], waiting["capabilities"]) == (
            "capabilities",
            reason,
            ["big-mem", "tpu"],
        )
        human = env.cli("run", "inspect", run_id).stdout
        assert "waiting for a worker of task fc-tpu offering capabilities [big-mem, tpu]: none is live" in human, human
        time.sleep(1.0)
        assert env.cli.status(run_id)["steps"]["train"]["status"] == "queued"
        assert env.rows(run_id, "train", journal=plain.journal) == []

        capable.start()  # after the definition and the run: the queued task waits for it
        run = env.wait(run_id)
        after = env.cli("run", "inspect", run_id, json=True)
    finally:
        capable.stop()
        plain.stop()
    assert run["status"] == "completed", env.diagnose() + capable.output
    assert executed_by(env, capable.journal, run_id)["train"] == "tpu-1"
    assert "waiting" not in after["steps"]["train"]


def hold_first_step_and_pause(env: Env, journal: Journal, workflow: str) -> tuple[str, str]:
    """Start a run whose step `a` waits at its gate, pause the run, let `a` finish.

    Returns (run id, the worker that ran `a`). The run is then paused with `b`
    pending: nothing is queued for `b` until the test resumes the run.
    """
    run_id = env.cli.start(workflow, {"hold": ["a"]})
    first = env.began(run_id, "a", journal)
    env.cli("run", "pause", run_id)
    open_gate(journal, run_id, "a")
    paused = env.cli.wait_status(run_id, "paused")
    assert statuses(paused) == {"a": "completed", "b": "pending"}
    return run_id, first["worker"]


def test_sticky_soft_keeps_a_run_on_one_worker_and_falls_back_when_that_worker_dies(env, tmp_path):
    workers = {wid: own_worker(tmp_path, env.cli.url, "fc-soft", wid) for wid in ("soft-1", "soft-2")}
    journal = workers["soft-1"].journal
    try:
        for worker in workers.values():
            worker.start()
        slow = {"sleep": 0.2}  # long enough for the worker to report step.started
        env.register(
            {
                "name": "fc-sticky-soft",
                "sticky": "soft",
                "steps": [
                    step("a", "fc-soft", input=slow),
                    step("b", "fc-soft", ["a"], input=slow),
                    step("c", "fc-soft", ["b"], input=slow),
                ],
            }
        )
        runs = [env.cli.start("fc-sticky-soft") for _ in range(6)]
        final = [env.wait(run_id) for run_id in runs]
        assert [r["status"] for r in final] == ["completed"] * 6
        for run_id in runs:
            ran = executed_by(env, journal, run_id)
            assert len(ran) == 3 and len(set(ran.values())) == 1, (run_id, ran)

        env.register(
            {
                "name": "fc-sticky-soft-fallback",
                "sticky": "soft",
                "steps": [step("a", "fc-soft"), step("b", "fc-soft", ["a"])],
            }
        )
        run_id, bound = hold_first_step_and_pause(env, journal, "fc-sticky-soft-fallback")
        (other,) = set(workers) - {bound}
        workers[bound].procs[-1].kill()
        env.cli("run", "resume", run_id)
        run = env.wait(run_id, timeout=20)
    finally:
        for worker in workers.values():
            worker.stop()
    assert run["status"] == "completed", env.diagnose()
    assert executed_by(env, journal, run_id) == {"a": bound, "b": other}
    # b waited for its bound worker before falling back (after ~5 s) to any worker.
    assert seconds_between(run["steps"]["b"]["queued_at"], run["steps"]["b"]["started_at"]) >= 4.5


def test_sticky_soft_binds_a_run_whose_steps_are_quick(env, tmp_path):
    workers = {wid: own_worker(tmp_path, env.cli.url, "fc-quick", wid) for wid in ("quick-1", "quick-2")}
    journal = workers["quick-1"].journal
    try:
        for worker in workers.values():
            worker.start()
        env.register(
            {
                "name": "fc-sticky-quick",
                "sticky": "soft",
                "steps": [step("a", "fc-quick"), step("b", "fc-quick", ["a"]), step("c", "fc-quick", ["b"])],
            }
        )
        runs = [env.cli.start("fc-sticky-quick") for _ in range(6)]
        final = [env.wait(run_id) for run_id in runs]
    finally:
        for worker in workers.values():
            worker.stop()
    assert [r["status"] for r in final] == ["completed"] * 6
    ran = [executed_by(env, journal, run_id) for run_id in runs]
    assert [len(set(r.values())) for r in ran] == [1] * 6, ran


def test_sticky_hard_waits_for_its_worker_to_come_back(env, tmp_path):
    workers = {wid: own_worker(tmp_path, env.cli.url, "fc-hard", wid) for wid in ("hard-1", "hard-2")}
    journal = workers["hard-1"].journal
    try:
        for worker in workers.values():
            worker.start()
        env.register(
            {
                "name": "fc-sticky-hard",
                "sticky": "hard",
                "timeout": "60s",
                "steps": [step("a", "fc-hard"), step("b", "fc-hard", ["a"])],
            }
        )
        run_id, bound = hold_first_step_and_pause(env, journal, "fc-sticky-hard")
        first_pid = env.rows(run_id, "a", journal=journal)[0]["pid"]
        workers[bound].procs[-1].kill()
        env.cli("run", "resume", run_id)

        # The other worker is idle and serves the same task, but b is its bound worker's.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert env.cli.status(run_id)["steps"]["b"]["status"] == "queued"
            time.sleep(0.3)
        assert env.rows(run_id, "b", journal=journal) == []

        workers[bound].start()  # the same file: the same worker_id, a new process
        run = env.wait(run_id)
    finally:
        for worker in workers.values():
            worker.stop()
    assert run["status"] == "completed", env.diagnose()
    (b,) = env.rows(run_id, "b", journal=journal)
    assert b["worker"] == bound and b["pid"] != first_pid


def test_sticky_soft_step_whose_worker_dies_mid_task_falls_back_to_another_worker(env, tmp_path):
    workers = {
        wid: own_worker(tmp_path, env.cli.url, "fc-soft-crash", wid, ack_wait=2) for wid in ("crash-1", "crash-2")
    }
    journal = workers["crash-1"].journal
    try:
        for worker in workers.values():
            worker.start()
        env.register(
            {
                "name": "fc-sticky-soft-crash",
                "sticky": "soft",
                "steps": [
                    step("a", "fc-soft-crash", input={"sleep": 0.2}),
                    step("b", "fc-soft-crash", ["a"], input={"hold": ["b"]}),
                ],
            }
        )
        run_id = env.cli.start("fc-sticky-soft-crash")
        bound = env.began(run_id, "b", journal)["worker"]
        (other,) = set(workers) - {bound}
        wait_for(lambda: env.cli.status(run_id)["steps"]["b"]["status"] == "running", 10, "b to be running")
        workers[bound].procs[-1].kill()  # b runs on its bound worker, which dies
        open_gate(journal, run_id, "b")  # a second execution of b may finish at once
        run = env.wait(run_id, timeout=10)
    finally:
        for worker in workers.values():
            worker.stop()
    assert run["status"] == "completed", env.diagnose()
    assert [r["worker"] for r in env.rows(run_id, "b", journal=journal)] == [bound, other]


# ---- idempotency keys and deadlines across an engine restart (these restart the module's engine) ---------------


def test_an_idempotency_key_returns_the_same_run_also_after_an_engine_restart(env):
    env.register({"name": "fc-idem", "idempotency_key": "order.id", "steps": [step("a", "fc-echo")]})
    env.register({"name": "fc-idem-explicit", "steps": [step("a", "fc-echo")]})
    first = env.cli("run", "start", "fc-idem", '{"order": {"id": 7}}').stdout
    assert env.cli("run", "start", "fc-idem", '{"order": {"id": 7}, "note": "again"}').stdout == first
    run_id = first.split()[1]
    other = env.cli.start("fc-idem", {"order": {"id": 8}})
    assert other != run_id
    keyed = env.cli("run", "start", "fc-idem-explicit", "1", "--idempotency-key", "job-42", json=True)["run_id"]
    assert env.cli("run", "start", "fc-idem-explicit", "2", "--idempotency-key", "job-42", json=True)["run_id"] == keyed
    plain = env.cli.start("fc-idem-explicit", 1)
    assert plain != keyed
    assert env.wait(run_id)["input"] == {"order": {"id": 7}}  # the first start's input, run once
    assert len(env.rows(run_id, "a")) == 1

    old_pid, new_pid = restart_serve(env.serve)
    assert new_pid != old_pid
    assert env.cli.start("fc-idem", {"order": {"id": 7}}) == run_id
    assert env.cli("run", "start", "fc-idem-explicit", "3", "--idempotency-key", "job-42", json=True)["run_id"] == keyed
    listed = env.cli("run", "list", "--workflow", "fc-idem", json=True)
    assert sorted(r["run_id"] for r in listed) == sorted([run_id, other])


def test_a_workflow_deadline_survives_an_engine_restart(env):
    env.register({"name": "fc-deadline-restart", "timeout": "4s", "steps": [step("a", "fc-idle")]})
    run_id = env.cli.start("fc-deadline-restart")
    env.cli.wait_status(run_id, "running")
    restart_serve(env.serve)
    assert env.cli.status(run_id)["status"] == "running"

    run = env.wait(run_id, timeout=15)
    assert (run["status"], run["error"]) == ("cancelled", "deadline exceeded"), env.diagnose()
    assert 4.0 <= seconds_between(run["created_at"], run["completed_at"]) < 6.0
    types = [e["type"] for e in env.cli.events(run_id)]
    assert types.count("workflow.cancelled") == 1, types
