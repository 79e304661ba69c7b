"""examples/reactive runs as its docstrings and README say: `dagnats reactive serve
examples/reactive/plan_review.py` and `python examples/reactive/reviewer.py --request p1`,
real processes on a real nats-server; the plan is approved in the third review."""

from __future__ import annotations

import asyncio
import sys

import nats

from dagnats.domain.reactive.decide import execution_id
from dagnats.infra.reactive.serve import load_registry
from dagnats.infra.reactive.store import load_execution

from e2e_support import CLI, EXAMPLES, Proc, base_env

EXAMPLE = EXAMPLES / "reactive"


def test_the_example_defines_a_valid_registry():
    registry = load_registry(str(EXAMPLE / "plan_review.py"))
    assert registry.list() == ["plan-review"]


def test_the_plan_review_example_is_approved_in_the_third_review(nats_url, run):
    env = base_env(nats_url)
    engine = Proc("reactive", [*CLI, "reactive", "serve", str(EXAMPLE / "plan_review.py")], env, ready_line="ready")
    reviewer = Proc("reviewer", [sys.executable, str(EXAMPLE / "reviewer.py"), "--request", "p1"], env)
    exec_id = execution_id("plan-review", "plan.p1")

    async def completed():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            for _ in range(300):
                ex, _, _ = await load_execution(js, exec_id)
                if ex.is_terminal:
                    return ex
                await asyncio.sleep(0.1)
            raise AssertionError(f"{exec_id} did not end")
        finally:
            await nc.close()

    try:
        engine.start()
        reviewer.start()
        ex = run(completed(), timeout=60)
        assert ex.status == "completed" and ex.state["phase"] == "approved" and ex.state["iteration"] == 2
        assert ex.state["feedback"] == ["round 1: more detail", "round 2: more detail"]
        timeline = [(t["rule_id"], t["action"]) for t in ex.state["timeline"]]
        assert timeline == [
            ("submit", "publish_async"), ("submit", "callback"),
            ("revise", "publish_async"), ("revise", "callback"),
            ("revise", "publish_async"), ("revise", "callback"),
            ("approve", "complete"),
        ]  # fmt: skip
        assert engine.stop() == 0  # SIGTERM: a clean exit, every subscription closed
    finally:
        reviewer.stop()
        engine.stop()
