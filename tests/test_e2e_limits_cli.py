"""`dagnats limits` and `dagnats run inspect` on steps and runs held by a limit, through
the real CLI: a `dagnats serve` (embedded NATS) and one worker process per module.

Each test owns its workflow and task names, so the limit keys it reads are its own.
Handlers of the `cli-gated` task wait at a gate the test opens, so who holds a
slot and who queues is known exactly; a rate limit of one per hour keeps its
second run waiting for as long as the test looks.
"""

from __future__ import annotations

import re

import pytest

from e2e_support import GATE_HANDLERS, Env, module_env, open_gate, step, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = (
    GATE_HANDLERS
    + """
from typing import Any


@w.task("cli-gated")
async def cli_gated(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin")
    await gate(ctx)
    journal(ctx, "end")
    return data


@w.task("cli-quick")
def cli_quick(ctx: TaskContext, data: Any) -> Any:
    journal(ctx, "begin")
    return data
"""
)

LISTING_FIELDS = {
    "key",
    "kind",
    "rule",
    "limit",
    "period_ms",
    "in_use",
    "holders",
    "queue",
    "queued",
    "head",
    "next_free_at",
}
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with module_env(tmp_path_factory.mktemp("limits-cli"), HANDLERS, max_concurrent=16) as env:
        yield env


def limit_of(env: Env, key: str, *args: str) -> dict:
    listed = env.cli("limits", "--prefix", key, *args, json=True)
    assert [item["key"] for item in listed] == [key], listed
    return listed[0]


def step_waiting(env: Env, run_id: str, step_id: str) -> dict:
    """The step's `waiting` in `run inspect --json`, once it waits for a limit."""

    def held():
        shown = env.cli("run", "inspect", run_id, json=True)["steps"][step_id]
        return shown if shown["status"] == "waiting" and shown.get("waiting") else None

    return wait_for(held, 15, f"step {step_id} of {run_id} to wait for a limit")["waiting"]


def held_at(env: Env, run_id: str, step_id: str) -> str:
    """When the step was first held (its `step.held` fact)."""
    events = env.cli.events(run_id)
    return next(e["timestamp"] for e in events if e["type"] == "step.held" and e["step_id"] == step_id)


def finish(env: Env, run_ids: list[str], step_id: str) -> None:
    for run_id in run_ids:
        open_gate(env.journal, run_id, step_id)
    for run_id in run_ids:
        assert env.wait(run_id, timeout=30)["status"] == "completed"


def test_a_concurrency_limit_lists_its_holder_and_its_queue_in_order(env):
    env.register({"name": "cli-capped", "steps": [step("work", "cli-gated", max_task_concurrency=1)]})
    first = env.cli.start("cli-capped", {"n": 1})
    env.began(first, "work")
    second = env.cli.start("cli-capped", {"n": 2})
    step_waiting(env, second, "work")
    third = env.cli.start("cli-capped", {"n": 3})
    step_waiting(env, third, "work")
    try:
        item = limit_of(env, "task.cli-gated")
        assert set(item) == LISTING_FIELDS
        rule = "max_task_concurrency 1 of task cli-gated"
        assert (item["kind"], item["rule"], item["limit"], item["period_ms"]) == ("slots", rule, 1, 0)
        assert (item["in_use"], item["queued"], item["next_free_at"]) == (1, 2, "")
        assert [(h["run_id"], h["step_id"], h["attempt"]) for h in item["holders"]] == [(first, "work", 1)]
        assert [(w["position"], w["run_id"], w["step_id"], w["attempt"]) for w in item["queue"]] == [
            (1, second, "work", 1),
            (2, third, "work", 1),
        ]
        assert all(re.fullmatch(r"\d{4}-.*Z", w["since"]) for w in item["queue"] + item["holders"])
        assert item["queue"][0]["since"] <= item["queue"][1]["since"]
        assert item["head"] == (
            f"run {second} step work waits since {item['queue'][0]['since']}: all 1 slots in use ({rule})"
        )

        # --queue N shows the first N waiters; `queued` still counts them all.
        short = limit_of(env, "task.cli-gated", "--queue", "1")
        assert ([w["run_id"] for w in short["queue"]], short["queued"]) == ([second], 2)

        human = env.cli("limits", "--prefix", "task.cli-gated").stdout.splitlines()
        assert human[0].split() == ["KEY", "KIND", "IN", "USE", "QUEUED", "RULE"]
        assert human[1].split(None, 4) == ["task.cli-gated", "slots", "1/1", "2", rule]
        assert human[3] == f"task.cli-gated: {item['head']}"
        assert human[4].split() == ["#", "RUN", "STEP", "ATTEMPT", "SINCE"]
        assert [line.split() for line in human[5:7]] == [
            ["1", second, "work", "1", item["queue"][0]["since"]],
            ["2", third, "work", "1", item["queue"][1]["since"]],
        ]
        header = human[4]
        for line, run_id, waiter in zip(human[5:7], (second, third), item["queue"], strict=True):
            assert line.index(run_id) == header.index("RUN") and line.index(waiter["since"]) == header.index("SINCE")
        short_human = env.cli("limits", "--prefix", "task.cli-gated", "--queue", "1").stdout.splitlines()
        assert short_human[-1] == "  … and 1 more"
    finally:
        finish(env, [first, second, third], "work")
    done = limit_of(env, "task.cli-gated")
    assert (done["in_use"], done["queued"], done["holders"], done["queue"]) == (0, 0, [], [])


def test_run_inspect_says_which_limit_holds_a_step_since_when_and_its_place(env):
    env.register({"name": "cli-single", "steps": [step("deploy", "cli-gated", singleton=True)]})
    first = env.cli.start("cli-single", {"env": "a"})
    env.began(first, "deploy")
    second = env.cli.start("cli-single", {"env": "b"})
    try:
        waiting = step_waiting(env, second, "deploy")
        since = held_at(env, second, "deploy")
        reason = "singleton step deploy of workflow cli-single: all 1 in use, queued at 1"
        assert waiting == {
            "kind": "limit",
            "since": since,
            "description": reason,
            "limit": "single.cli-single.deploy",
            "position": 1,
            "for": f"{reason} (limit single.cli-single.deploy, place 1 in its queue, since {since})",
        }
        human = env.cli("run", "inspect", second).stdout
        row = next(line for line in human.splitlines() if line.startswith("deploy "))
        assert row.split()[:3] == ["deploy", "waiting", "0"]
        assert row.endswith(f"waiting for {waiting['for']}")
        # run status shows the same line for the step.
        assert f"waiting for {waiting['for']}" in env.cli("run", "status", second).stdout
    finally:
        finish(env, [first, second], "deploy")


def test_a_rate_limited_step_shows_when_the_next_token_is_free(env):
    env.register({"name": "cli-paced", "steps": [step("call", "cli-quick", rate_limit={"limit": 1, "period": "1h"})]})
    first = env.cli.start("cli-paced", {"n": 1})
    assert env.wait(first)["status"] == "completed"
    second = env.cli.start("cli-paced", {"n": 2})
    try:
        waiting = step_waiting(env, second, "call")
        item = limit_of(env, "rate.cli-quick")
        rule = "rate_limit of task cli-quick (1 per 3600000 ms)"
        assert set(item) == LISTING_FIELDS
        assert (item["kind"], item["rule"], item["limit"], item["period_ms"]) == ("rate", rule, 1, 3_600_000)
        assert (item["in_use"], item["queued"], item["holders"]) == (1, 1, [])
        assert [(w["position"], w["run_id"], w["step_id"]) for w in item["queue"]] == [(1, second, "call")]
        free_at = item["next_free_at"]
        assert re.fullmatch(STAMP, free_at)
        assert item["head"].endswith(f"1 of 1 per 3600000 ms used; the next token is free at {free_at}")

        # The step asks again when the token is free: its `limit` timer, and its `due`.
        assert waiting["due"] == free_at and waiting["limit"] == "rate.cli-quick"
        assert waiting["for"] == (
            f"{rule} (limit rate.cli-quick, since {held_at(env, second, 'call')}, asks again at {free_at})"
        )
        view = env.cli("run", "inspect", second, json=True)
        assert [(t["kind"], t["step_id"], t["due"]) for t in view["timers"]] == [("limit", "call", free_at)]
        types = [e["type"] for e in env.cli.events(second) if e["step_id"] == "call"]
        assert types == ["step.held", "step.limited"]

        human = env.cli("limits", "--prefix", "rate.cli-quick").stdout.splitlines()
        assert re.fullmatch(rf"rate\.cli-quick  rate  1/1 per 3600\.00s  1 +{re.escape(rule)}", human[1]), human
        assert human[3] == f"rate.cli-quick: {item['head']}"
    finally:
        env.cli("run", "cancel", second)
    assert env.cli.status(second)["status"] == "cancelled"


def test_a_pending_run_shows_the_max_runs_limit_in_inspect_status_and_the_listing(env):
    env.register({"name": "cli-serial", "concurrency": {"max_runs": 1}, "steps": [step("only", "cli-gated")]})
    first = env.cli.start("cli-serial", {"n": 1})
    env.began(first, "only")
    second = env.cli.start("cli-serial", {"n": 2})
    try:
        view = wait_for(
            lambda: (v := env.cli("run", "inspect", second, json=True)).get("waiting") and v,
            15,
            "the second run to wait for max_runs",
        )
        assert view["status"] == "pending"
        waiting = view["waiting"]
        reason = "concurrency.max_runs 1 of workflow cli-serial: all 1 in use, queued at 1"
        assert (waiting["kind"], waiting["limit"], waiting["description"], waiting["position"]) == (
            "limit",
            "runs.cli-serial",
            reason,
            1,
        )
        limited = [e for e in env.cli.events(second) if e["type"] == "workflow.limited"]
        assert waiting["since"] == limited[0]["timestamp"]
        human = env.cli("run", "inspect", second).stdout.splitlines()
        assert human[2] == "Status:   pending"
        assert human[3] == f"Waiting:  for {waiting['for']}"
        assert f"Waiting:  for {waiting['for']}" in env.cli("run", "status", second).stdout

        item = limit_of(env, "runs.cli-serial")
        assert [h["run_id"] for h in item["holders"]] == [first]
        assert item["queue"] == [{"run_id": second, "since": item["queue"][0]["since"], "position": 1}]
        listing = env.cli("limits", "--prefix", "runs.cli-serial").stdout.splitlines()
        assert listing[-1].split()[:4] == ["1", second, "-", "-"]
    finally:
        finish(env, [first, second], "only")


HOSTILE_PREFIXES = ["*", ">", "task.*", "task.>", "runs.cli-present ", "a b", "ünï", "x" * 2000]


def test_a_hostile_prefix_is_compared_as_text_and_answers_empty(env):
    env.register({"name": "cli-present", "concurrency": {"max_runs": 3}, "steps": [step("q", "cli-quick")]})
    run_id = env.cli.start("cli-present", {})
    assert env.wait(run_id)["status"] == "completed"
    assert any(item["key"] == "runs.cli-present" for item in env.cli("limits", json=True))
    for prefix in HOSTILE_PREFIXES:
        assert env.cli("limits", "--prefix", prefix, json=True) == [], prefix
        assert env.cli("limits", "--prefix", prefix).stdout == f"No limits with keys starting with {prefix!r}.\n"
