"""sleep, approval, wait_for_event and sub_workflow end to end: the real CLI, a real
`dagnats serve` (embedded NATS) and a real worker process.

For each type: a happy path with what `run status` / `run inspect` say while
the step waits, and a drill where `dagnats serve` is killed with -9 while the
step waits and started again on the same data dir (its nats-server, left
running by the kill, is stopped and started again by the new serve); then bad
input, each refused with one `error:` line and nothing changed.

One serve and one worker serve the module; each test has its own workflow
names. The worker journals every execution to a file outside NATS, so the
drills count what really ran. A killed serve is started again by the `env`
fixture if a drill failed half way.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from e2e_support import (
    GATE_HANDLERS,
    Env,
    Proc,
    Result,
    base_env,
    module_env,
    open_gate,
    step,
    wait_for,
)

pytestmark = pytest.mark.e2e

HANDLERS = (
    GATE_HANDLERS
    + """
from typing import Any


@w.task("st-echo")
def st_echo(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin", input=data)
    return data


@w.task("st-gated")
async def st_gated(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin", input=data)
    await gate(ctx)
    journal(ctx, "end")
    return {"child_saw": data}
"""
)

ID_RULE = "must match ^[A-Za-z0-9_-]{1,64}$"
NO_RUN = "0" * 32

# A core-NATS subscriber in its own process, as an approval system outside
# would be: prints one `request <json>` line per approval request it gets.
LISTENER = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1], max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    async def got(msg):
        print("request " + msg.data.decode(), flush=True)
    await nc.subscribe(sys.argv[2], cb=got)
    await nc.flush()
    print("listening", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    with module_env(tmp_path_factory.mktemp("step-types-a"), HANDLERS, max_concurrent=16) as env:
        yield env


@pytest.fixture
def env(module: Env) -> Env:
    if not module.serve.running:  # an earlier drill failed between its kill and its restart
        module.serve.start()
    return module


@pytest.fixture
def listen(module: Env):
    """Start a listener on a subject; returns a function reading the requests it got."""
    procs: list[Proc] = []

    def start(subject: str):
        argv = [sys.executable, "-c", LISTENER, module.serve.url, subject]
        proc = Proc("approval listener", argv, base_env(), ready_line="listening")
        procs.append(proc.start())

        def requests() -> list[dict[str, Any]]:
            return [json.loads(line[len("request ") :]) for line in list(proc.lines) if line.startswith("request ")]

        return requests

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


# ---- helpers ----------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def waiting(env: Env, run_id: str, step_id: str, kind: str, timeout: float = 15) -> dict[str, Any]:
    """Poll `run status --json` until the step waits for `kind`; the run's status."""

    def probe():
        run = env.cli.status(run_id)
        shown = run["steps"][step_id].get("waiting") or {}
        return run if run["steps"][step_id]["status"] == "running" and shown.get("kind") == kind else None

    return wait_for(probe, timeout, f"step {step_id} of {run_id} to wait for {kind}", interval=0.1)


def human_line(text: str, step_id: str) -> str:
    """The line of `step_id` in a human `run status` or `run inspect`."""
    found = [line for line in text.splitlines() if line.split()[:1] in ([step_id], [f"{step_id}:"])]
    assert len(found) == 1, text
    return found[0]


def types(env: Env, run_id: str) -> list[str]:
    return [e["type"] for e in env.cli.events(run_id)]


def refused(result: Result, message: str) -> None:
    """Exit 1, nothing on stdout, exactly one line: `error: <message>`."""
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n"), result


def assert_restarted_cleanly(env: Env) -> None:
    """The serve started after a kill logged no crashed run actor and no traceback."""
    assert env.serve.proc is not None
    log = env.serve.proc.output
    assert "actor crashed" not in log and "Traceback" not in log, log


def crash_and_restart(env: Env) -> None:
    """kill -9 `dagnats serve`, then start it again on the same data dir and port."""
    killed = env.serve.pid
    env.serve.kill()
    assert not env.serve.running
    env.serve.start()
    assert env.serve.pid != killed


# ---- sleep ------------------------------------------------------------------------------


def sleeper(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"id": "nap", "type": "sleep", "config": config},
            step("after", "st-echo", ["nap"], input={"woke": True}),
        ],
    }


def wake_at(env: Env, run_id: str) -> str:
    """The wake time the engine recorded when the sleep began."""
    (started,) = [e for e in env.cli.events(run_id) if e["type"] == "step.sleep.started"]
    return started["payload"]["wake_at"]


@pytest.mark.parametrize("mode", ["duration", "until-rfc3339", "until-millis"])
def test_a_sleep_wakes_at_its_time_and_then_the_next_step_runs(env, mode):
    name = unique("st-sleep")
    env.register(sleeper(name, {"duration": "1500ms"} if mode == "duration" else {"until_input_path": "wake.at"}))
    # 4 s ahead: the start must reach the engine before then on a loaded machine (else it wakes at once).
    wake = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)  # whole ms, for "until-millis"
    at = {"duration": None, "until-rfc3339": stamp(wake), "until-millis": int(wake.timestamp() * 1000)}[mode]
    started = datetime.now(UTC)
    run_id = env.cli.start(name, None if at is None else {"wake": {"at": at}})

    final = env.wait(run_id)
    assert (final["status"], final["output"]) == ("completed", {"woke": True}), env.diagnose()
    assert final["steps"]["nap"]["output"] is None
    due = wake_at(env, run_id)
    if mode == "duration":
        assert started + timedelta(seconds=1.5) <= instant(due) <= datetime.now(UTC), due
    else:
        assert due == stamp(wake)
    (after,) = env.rows(run_id, "after")
    assert after["t"] >= instant(due).timestamp()  # the next step waited for the wake time
    assert env.cli("run", "inspect", run_id, json=True)["timers"] == []


def test_status_and_inspect_show_what_a_sleep_waits_for_and_a_cancel_purges_its_timer(env):
    name = unique("st-sleep-shown")
    env.register(sleeper(name, {"duration": "1h"}))
    run_id = env.cli.start(name)

    run = waiting(env, run_id, "nap", "sleep")
    shown = run["steps"]["nap"]["waiting"]
    due = shown["due"]
    assert timedelta(minutes=59) < instant(due) - datetime.now(UTC) <= timedelta(hours=1)
    assert shown["for"] == f"the time to wake, {due}"
    assert run["steps"]["after"]["status"] == "pending"
    assert human_line(env.cli("run", "status", run_id).stdout, "nap:").split() == [
        "nap:",
        "running",
        "attempts:",
        "1",
        "waiting",
        "for",
        "the",
        "time",
        "to",
        "wake,",
        due,
    ]
    inspected = env.cli("run", "inspect", run_id, json=True)
    assert [(t["kind"], t["step_id"], t["attempt"], t["due"]) for t in inspected["timers"]] == [
        ("sleep", "nap", 1, due)
    ]
    assert inspected["steps"]["nap"]["waiting"] == shown
    assert inspected["blockers"] == {"after": ["nap"]}
    human = env.cli("run", "inspect", run_id).stdout
    assert f"waiting for the time to wake, {due}" in human_line(human, "nap")
    assert human_line(human, "sleep").split() == ["sleep", "nap", "1", due]

    env.cli("run", "cancel", run_id)
    assert env.wait(run_id)["status"] == "cancelled"
    assert env.cli("run", "inspect", run_id, json=True)["timers"] == []
    assert env.rows(run_id) == []


def test_a_cron_sleep_waits_for_the_next_occurrence(env):
    name = unique("st-cron")
    env.register(sleeper(name, {"cron": "0 3 * * *"}))
    run_id = env.cli.start(name)
    run = waiting(env, run_id, "nap", "sleep")
    due = instant(run["steps"]["nap"]["waiting"]["due"])
    now = datetime.now(UTC)
    assert (due.hour, due.minute, due.second, due.microsecond) == (3, 0, 0, 0)
    assert now < due <= now + timedelta(days=1)
    assert [t["kind"] for t in env.cli("run", "inspect", run_id, json=True)["timers"]] == ["sleep"]
    env.cli("run", "cancel", run_id)
    assert env.wait(run_id)["status"] == "cancelled"


def test_a_sleep_whose_input_time_is_not_a_time_fails_the_run_with_a_clear_step_error(env):
    name = unique("st-badtime")
    env.register(sleeper(name, {"until_input_path": "wake"}))
    run_id = env.cli.start(name, {"wake": "tomorrow"})
    run = env.wait(run_id)
    error = (
        "sleep: until_input_path 'wake': 'tomorrow' is not a time (an RFC 3339 instant or milliseconds since the epoch)"
    )
    assert (run["status"], run["steps"]["nap"]["status"], run["steps"]["nap"]["error"]) == ("failed", "failed", error)
    assert run["steps"]["after"]["status"] == "pending"  # never started: the run ended first
    assert error in env.cli("run", "status", run_id).stdout
    assert env.rows(run_id) == []
    missing = env.cli.start(name, {"other": 1})
    assert env.wait(missing)["steps"]["nap"]["error"] == "sleep: until_input_path: the run input has no 'wake'"


def test_a_sleep_survives_a_kill_9_of_serve_and_wakes_once(env):
    name = unique("st-sleep-drill")
    env.register(sleeper(name, {"duration": "5s"}))
    run_id = env.cli.start(name)
    due = instant(waiting(env, run_id, "nap", "sleep")["steps"]["nap"]["waiting"]["due"])

    env.serve.kill()
    assert datetime.now(UTC) < due, "serve was killed after the sleep was due: a slow machine?"
    env.serve.start()  # the timer fires after this restart, or into the inbox while serve is down
    final = env.wait(run_id, timeout=30)
    assert (final["status"], final["output"]) == ("completed", {"woke": True}), env.diagnose()
    (after,) = env.rows(run_id, "after")  # the next step ran once, after the wake time
    assert after["t"] >= due.timestamp()
    kinds = types(env, run_id)
    assert (kinds.count("step.sleep.started"), kinds.count("step.sleep.completed")) == (1, 1), kinds
    assert kinds.count("workflow.completed") == 1
    assert_restarted_cleanly(env)


# ---- approval ---------------------------------------------------------------------------


def approver(name: str, subject: str) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {
                "id": "ok",
                "type": "approval",
                "config": {
                    "subject": subject,
                    "timeout": "1m",
                    "description": "ship it?",
                    "metadata": {"team": "ops"},
                },
            },
            step("ship", "st-echo", ["ok"]),
        ],
    }


def test_an_approval_sends_its_request_waits_and_completes_when_approved_through_the_cli(env, listen):
    name = unique("st-approve")
    subject = f"approvals.{name}"
    requests = listen(subject)
    env.register(approver(name, subject))
    run_id = env.cli.start(name, {"version": 3})

    (request,) = wait_for(requests, 10, "the approval request")
    assert {k: request[k] for k in ("run_id", "step_id", "attempt", "description", "metadata", "input")} == {
        "run_id": run_id,
        "step_id": "ok",
        "attempt": 1,
        "description": "ship it?",
        "metadata": {"team": "ops"},
        "input": {"version": 3},
    }
    assert len(request["token"]) == 64
    run = waiting(env, run_id, "ok", "approval")
    shown = run["steps"]["ok"]["waiting"]
    assert (shown["subject"], shown["due"]) == (subject, request["expires_at"])
    assert shown["for"] == f"an approval (request sent on {subject}) (until {request['expires_at']})"
    assert f"waiting for an approval (request sent on {subject})" in human_line(
        env.cli("run", "status", run_id).stdout, "ok:"
    )
    timers = env.cli("run", "inspect", run_id, json=True)["timers"]
    assert [(t["step_id"], t["due"]) for t in timers] == [("ok", request["expires_at"])]

    assert env.cli("run", "approve", run_id, "ok", "--comment", "looks good").stdout == "Step ok approved\n"
    final = env.wait(run_id)
    assert final["status"] == "completed", env.diagnose()
    assert final["steps"]["ok"]["output"] == {"approved": True, "comment": "looks good"}
    (ship,) = env.rows(run_id, "ship")
    assert ship["input"] == final["steps"]["ok"]["output"]
    assert env.cli("run", "inspect", run_id, json=True)["timers"] == []


def test_a_rejected_approval_fails_the_run_and_a_second_decision_is_refused(env):
    name = unique("st-reject")
    env.register(approver(name, f"approvals.{name}"))
    run_id = env.cli.start(name)
    waiting(env, run_id, "ok", "approval")

    assert env.cli("run", "reject", run_id, "ok", "--reason", "not today").stdout == "Step ok rejected\n"
    second = env.cli("run", "approve", run_id, "ok", check=False)
    assert (
        second.returncode == 1
        and second.stdout == ""
        and second.stderr
        in (
            f"error: step ok of run {run_id} was already approved or rejected\n",
            f"error: step ok of run {run_id} is not waiting for an approval (it is failed)\n",
        )
    ), second
    final = env.wait(run_id)
    assert (final["status"], final["steps"]["ok"]["error"]) == ("failed", "rejected: not today")
    assert final["steps"]["ship"]["status"] != "completed"
    refused(
        env.cli("run", "reject", run_id, "ok", check=False),
        f"step ok of run {run_id} is not waiting for an approval (it is failed)",
    )
    kinds = types(env, run_id)
    assert (kinds.count("approval.rejected"), kinds.count("approval.granted")) == (1, 0), kinds
    assert env.rows(run_id) == []


def test_approving_an_unknown_run_an_unknown_step_or_a_step_not_waiting_is_refused_and_changes_nothing(env):
    name = unique("st-approve-bad")
    env.register(approver(name, f"approvals.{name}"))
    run_id = env.cli.start(name)
    waiting(env, run_id, "ok", "approval")
    before = env.cli.events(run_id)

    rule = f"{ID_RULE} (letters, digits, '_' and '-' only; no '.', '*', '>' or spaces)"
    refused(env.cli("run", "approve", NO_RUN, "ok", check=False), f"run '{NO_RUN}' not found")
    refused(env.cli("run", "approve", run_id, "ghost", check=False), f"run {run_id} has no step 'ghost'")
    refused(env.cli("run", "reject", run_id, "a.b", check=False), f"invalid step id 'a.b': {rule}")
    for decision in ("approve", "reject"):
        refused(
            env.cli("run", decision, run_id, "ship", check=False),
            f"step ship of run {run_id} is not waiting for an approval (it is pending)",
        )
    assert env.cli.events(run_id) == before
    assert env.cli.status(run_id)["steps"]["ok"]["waiting"]["kind"] == "approval"

    env.cli("run", "approve", run_id, "ok")
    assert env.wait(run_id)["status"] == "completed"
    refused(
        env.cli("run", "approve", run_id, "ship", check=False),
        f"step ship of run {run_id} is not waiting for an approval (it is completed)",
    )


def test_an_approval_still_works_after_a_kill_9_of_serve(env):
    name = unique("st-approve-drill")
    env.register(approver(name, f"approvals.{name}"))
    run_id = env.cli.start(name, {"version": 4})
    waiting(env, run_id, "ok", "approval")

    crash_and_restart(env)
    run = waiting(env, run_id, "ok", "approval")  # still waiting, as the rebuilt run says
    assert run["steps"]["ship"]["status"] == "pending"
    env.cli("run", "approve", run_id, "ok", "--comment", "after the crash")
    final = env.wait(run_id, timeout=30)
    assert final["status"] == "completed", env.diagnose()
    assert final["steps"]["ok"]["output"] == {"approved": True, "comment": "after the crash"}
    assert len(env.rows(run_id, "ship")) == 1
    kinds = types(env, run_id)
    assert (kinds.count("approval.requested"), kinds.count("approval.granted")) == (1, 1), kinds
    assert_restarted_cleanly(env)


# ---- wait_for_event ---------------------------------------------------------------------


def waiter(name: str, event: str, match: dict[str, str], timeout: str = "1m", first: bool = False) -> dict[str, Any]:
    steps = [step("quote", "st-echo", input={"price": 10})] if first else []
    wait = {
        "id": "pay",
        "type": "wait_for_event",
        "depends_on": ["quote"] if first else [],
        "config": {"event": event, "match": match, "timeout": timeout},
    }
    return {"name": name, "steps": [*steps, wait, step("ship", "st-echo", ["pay"])]}


def publish(env: Env, event: str, data: Any) -> None:
    out = env.cli("event", "publish", event, json.dumps(data), json=True)
    assert out["event"] == event and out["seq"] > 0


def test_a_wait_for_event_matches_only_a_later_event_with_the_right_value(env):
    name, event = unique("st-wait"), unique("paid")
    env.register(waiter(name, event, {"left": "order", "op": "eq", "right": "input.order"}))
    publish(env, event, {"order": "o-1", "n": 0})  # before the run: never matches
    run_id = env.cli.start(name, {"order": "o-1"})

    run = waiting(env, run_id, "pay", "event")
    shown = run["steps"]["pay"]["waiting"]
    assert (shown["event"], shown["match"]) == (event, {"left": "order", "op": "eq", "right": "o-1"})
    assert shown["for"] == f'event {event} where order eq "o-1" (until {shown["due"]})'
    assert f'waiting for event {event} where order eq "o-1"' in human_line(
        env.cli("run", "inspect", run_id).stdout, "pay"
    )
    assert [t["step_id"] for t in env.cli("run", "inspect", run_id, json=True)["timers"]] == ["pay"]

    publish(env, event, {"order": "o-2", "n": 1})  # another order: no match
    publish(env, event, {"order": "o-1", "n": 2})
    final = env.wait(run_id)
    assert final["status"] == "completed", env.diagnose()
    assert final["steps"]["pay"]["output"] == {"order": "o-1", "n": 2}
    assert [r["input"] for r in env.rows(run_id, "ship")] == [{"order": "o-1", "n": 2}]
    assert env.cli("run", "inspect", run_id, json=True)["timers"] == []


def test_a_wait_for_event_compares_with_a_step_output_and_a_timeout_completes_it_with_timeout_true(env):
    name, event = unique("st-wait-gt"), unique("bid")
    env.register(waiter(name, event, {"left": "amount", "op": "gt", "right": "step.quote.output.price"}, first=True))
    run_id = env.cli.start(name)
    assert waiting(env, run_id, "pay", "event")["steps"]["pay"]["waiting"]["match"]["right"] == 10
    publish(env, event, {"amount": 10})  # not greater
    publish(env, event, {"amount": 11})
    assert env.wait(run_id)["steps"]["pay"]["output"] == {"amount": 11}

    timed = unique("st-wait-timeout")
    env.register(waiter(timed, unique("never"), {"left": "x", "op": "eq", "right": "input.x"}, timeout="1s"))
    run_id = env.cli.start(timed, {"x": 1})
    final = env.wait(run_id)
    assert (final["status"], final["steps"]["pay"]["output"]) == ("completed", {"timeout": True})
    assert [r["input"] for r in env.rows(run_id, "ship")] == [{"timeout": True}]
    assert "step.wait.timed_out" in types(env, run_id)


def test_events_published_while_serve_is_down_and_after_its_restart_still_match(env):
    name, event = unique("st-wait-drill"), unique("paid")
    env.register(waiter(name, event, {"left": "order", "op": "eq", "right": "input.order"}))
    early, late = env.cli.start(name, {"order": "o-8"}), env.cli.start(name, {"order": "o-9"})
    waiting(env, early, "pay", "event")
    waiting(env, late, "pay", "event")

    env.serve.kill()  # its nats-server lives on until the next serve replaces it
    publish(env, event, {"order": "o-8", "when": "engine down"})
    env.serve.start()
    publish(env, event, {"order": "o-9", "when": "after restart"})
    for run_id, when in ((early, "engine down"), (late, "after restart")):
        final = env.wait(run_id, timeout=30)
        assert final["status"] == "completed", env.diagnose()
        assert final["steps"]["pay"]["output"] == {"order": final["input"]["order"], "when": when}
        assert len(env.rows(run_id, "ship")) == 1
        kinds = types(env, run_id)
        assert (kinds.count("step.wait.started"), kinds.count("step.wait.matched")) == (1, 1), kinds
    assert_restarted_cleanly(env)


# ---- sub_workflow -----------------------------------------------------------------------


def family(name: str, detach: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    child = {"name": f"{name}-child", "steps": [step("c1", "st-gated")]}
    sub = {"id": "sub", "type": "sub_workflow", "config": {"workflow": child["name"], "detach": detach}}
    parent = {"name": name, "steps": [sub, step("end", "st-echo", ["sub"])]}
    return child, parent


def child_of(env: Env, run_id: str) -> str:
    return waiting(env, run_id, "sub", "child")["steps"]["sub"]["waiting"]["child_run_id"]


def test_a_child_run_is_linked_to_its_parent_and_its_output_completes_the_parent_step(env):
    name = unique("st-parent")
    child, parent = family(name)
    env.register(child)
    env.register(parent)
    run_id = env.cli.start(name, {"n": 1})

    run = waiting(env, run_id, "sub", "child")
    child_id = run["steps"]["sub"]["waiting"]["child_run_id"]
    assert run["steps"]["sub"]["waiting"]["for"] == f"child run {child_id}"
    assert f"waiting for child run {child_id}" in human_line(env.cli("run", "status", run_id).stdout, "sub:")
    began = env.began(child_id, "c1")
    assert began["input"] == {"n": 1}
    shown = env.cli.status(child_id)
    assert (shown["workflow"], shown["status"]) == (child["name"], "running")
    assert (shown["parent_run_id"], shown["parent_step_id"], shown["root_run_id"]) == (run_id, "sub", run_id)
    assert f"Parent:   {run_id}" in env.cli("run", "status", child_id).stdout

    open_gate(env.journal, child_id, "c1")
    final = env.wait(run_id)
    assert final["status"] == "completed", env.diagnose()
    assert final["steps"]["sub"]["output"] == {"child_saw": {"n": 1}}
    assert [r["input"] for r in env.rows(run_id, "end")] == [{"child_saw": {"n": 1}}]
    assert env.cli.status(child_id)["status"] == "completed"


def test_cancelling_a_parent_cancels_its_attached_child(env):
    name = unique("st-parent-cancel")
    child, parent = family(name)
    env.register(child)
    env.register(parent)
    run_id = env.cli.start(name)
    child_id = child_of(env, run_id)
    env.began(child_id, "c1")

    env.cli("run", "cancel", run_id)
    assert env.wait(run_id)["status"] == "cancelled"
    cancelled = env.wait(child_id)
    assert cancelled["status"] == "cancelled" and f"its parent run {run_id}" in cancelled["error"]
    open_gate(env.journal, child_id, "c1")
    assert env.rows(run_id, "end") == []


def test_a_detached_child_completes_its_parent_step_at_once_and_runs_as_a_root(env):
    name = unique("st-detach")
    child, parent = family(name, detach=True)
    env.register(child)
    env.register(parent)
    run_id = env.cli.start(name, {"n": 2})
    final = env.wait(run_id)
    assert final["status"] == "completed", env.diagnose()
    child_id = final["steps"]["sub"]["output"]["child_run_id"]
    assert [r["input"] for r in env.rows(run_id, "end")] == [{"child_run_id": child_id}]

    env.began(child_id, "c1")
    shown = env.cli.status(child_id)
    assert shown["status"] == "running" and "parent_run_id" not in shown
    open_gate(env.journal, child_id, "c1")
    assert env.wait(child_id)["output"] == {"child_saw": {"n": 2}}


def test_a_childs_completion_reaches_its_parent_after_a_kill_9_of_serve(env):
    name = unique("st-parent-drill")
    child, parent = family(name)
    env.register(child)
    env.register(parent)
    run_id = env.cli.start(name, {"n": 3})
    child_id = child_of(env, run_id)
    env.running(child_id, "c1")

    crash_and_restart(env)
    open_gate(env.journal, child_id, "c1")
    final = env.wait(run_id, timeout=30)
    assert final["status"] == "completed", env.diagnose()
    assert final["steps"]["sub"]["output"] == {"child_saw": {"n": 3}}
    assert (len(env.rows(child_id, "c1")), len(env.rows(run_id, "end"))) == (1, 1)
    kinds = types(env, run_id)
    assert (kinds.count("workflow.child.started"), kinds.count("workflow.child.completed")) == (1, 1), kinds
    assert types(env, child_id).count("workflow.completed") == 1
    assert_restarted_cleanly(env)


# ---- bad input --------------------------------------------------------------------------

BAD_DEFINITIONS = {
    "sleep-two-modes": (
        [{"id": "nap", "type": "sleep", "config": {"duration": "1s", "cron": "* * * * *"}}],
        'step "nap": config: a sleep needs exactly one of duration, cron, until_input_path (got 2)',
    ),
    "cron-six-fields": (
        [{"id": "nap", "type": "sleep", "config": {"cron": "0 * * * * *"}}],
        'step "nap": config.cron: "0 * * * * *": needs 5 fields (minute hour day month weekday), not 6',
    ),
    "wait-bad-op": (
        [
            {
                "id": "pay",
                "type": "wait_for_event",
                "config": {"event": "paid", "match": {"left": "a", "op": "like", "right": "input.a"}, "timeout": "1m"},
            }
        ],
        'step "pay": config.match.op: must be one of eq, ne, lt, lte, gt, gte (got "like")',
    ),
    "unknown-child-workflow": (
        [{"id": "sub", "type": "sub_workflow", "config": {"workflow": "nowhere-st"}}],
        "no workflow 'nowhere-st' is registered",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DEFINITIONS))
def test_a_bad_step_type_config_is_refused_at_registration_and_nothing_is_registered(env, case):
    steps, fragment = BAD_DEFINITIONS[case]
    name = unique("st-bad")
    path = env.tmp / f"{name}.json"
    path.write_text(json.dumps({"name": name, "steps": steps}))
    result = env.cli("workflow", "register", str(path), check=False)
    assert result.returncode == 1 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert name not in [d["name"] for d in env.cli.workflows()]


def test_an_event_or_signal_name_that_is_not_an_identifier_is_refused_and_nothing_is_sent(env):
    name = unique("st-names")
    env.register(approver(name, f"approvals.{name}"))
    run_id = env.cli.start(name)
    waiting(env, run_id, "ok", "approval")
    before_events = env.cli("status", json=True)["jetstream"]["streams"]["EVENTS"]["messages"]
    before_history = env.cli.events(run_id)

    rule = f"{ID_RULE} (letters, digits, '_' and '-' only; no '.', '*', '>' or spaces)"
    for bad in ("a.b", "*"):
        refused(env.cli("event", "publish", bad, "{}", check=False), f"invalid event name {bad!r}: {rule}")
        refused(env.cli("run", "signal", run_id, bad, "{}", check=False), f"invalid signal name {bad!r}: {rule}")
    assert env.cli("status", json=True)["jetstream"]["streams"]["EVENTS"]["messages"] == before_events
    assert env.cli.events(run_id) == before_history
    env.cli("run", "cancel", run_id)
