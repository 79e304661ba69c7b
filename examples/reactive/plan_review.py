"""A plan-review loop as a reactive workflow: `dagnats reactive serve examples/reactive/plan_review.py`.

Then, with the reviewer in examples/reactive/reviewer.py running:
    nats pub plans.requests '{"request_id": "p1", "plan": "ship it"}'   (or reviewer.py --request p1)
"""

import msgspec

from dagnats.reactive import ExecutionState, ReactiveRegistry, ReactiveWorkflow, Rule, phase_is


class ReviewRequest(msgspec.Struct):
    request_id: str
    plan: str


class ReviewResult(msgspec.Struct):
    task_id: str = ""
    approved: bool = False
    feedback: str = ""


class PlanState(ExecutionState, kw_only=True):
    plan: str = ""
    feedback: list[str] = msgspec.field(default_factory=list)


def build_review(ctx):
    if not ctx.state.plan:  # the first firing: take the plan from the request
        ctx.state.plan, ctx.state.phase = ctx.message.plan, "reviewing"
    return {"plan": ctx.state.plan, "iteration": ctx.state.iteration}


def apply_review(ctx, result: ReviewResult):
    if result.approved:
        ctx.state.phase = "approved"
    else:
        ctx.state.feedback.append(result.feedback)
        ctx.state.iteration += 1
        ctx.state.phase = "rejected"


registry = ReactiveRegistry()
registry.register_result_type("review-result", ReviewResult)
registry.register(
    ReactiveWorkflow(
        "plan-review",
        description="publish a plan for review until approved, escalate after 3 rejections",
        state_type=PlanState,
        state_bucket="plan_reviews",
        max_iterations=3,
        timeout="10m",
        on_complete="plans.approved",
        on_escalate="plans.escalated",
    )
    .add_rule(
        Rule("submit")
        .on_subject("plans.requests", ReviewRequest)
        .with_state_lookup("plan_reviews", lambda m: f"plan.{m.request_id}")
        .when("new execution", phase_is(""))
        .publish_async("plans.review", build_review, "review-result", apply_review)
    )
    .add_rule(
        Rule("revise")
        .watch_kv("plan_reviews", "plan.*")
        .when("rejected", phase_is("rejected"))
        .publish_async("plans.review", build_review, "review-result", apply_review)
    )
    .add_rule(Rule("approve").watch_kv("plan_reviews", "plan.*").when("approved", phase_is("approved")).complete())
)
