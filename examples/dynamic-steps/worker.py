"""Workers for examples/dynamic-steps: scan adds steps to its own run with ctx.add_step.

Run with:  dagnats worker examples/dynamic-steps/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Repo(msgspec.Struct):
    repo: str
    problems: list[str] = []


@w.task("dyn-scan")
def scan(ctx: TaskContext, repo: Repo) -> dict:
    fixes = []
    for n, problem in enumerate(repo.problems):
        # Each added step runs after this one; its input is given here.
        fixes.append(ctx.add_step(f"fix-{n}", "dyn-fix", input={"repo": repo.repo, "problem": problem}))
    if fixes:
        # A step after every fix: with no input, it gets {fix_id: output} of its dependencies.
        ctx.add_step("recheck", "dyn-recheck", after=fixes)
    return {"repo": repo.repo, "problems": len(repo.problems)}


@w.task("dyn-fix")
def fix(ctx: TaskContext, job: dict) -> str:
    return f"fixed {job['problem']} in {job['repo']}"


@w.task("dyn-recheck")
def recheck(ctx: TaskContext, fixed: dict) -> str:
    # fixed == {"scan": {...}, "fix-0": "...", "fix-1": "..."}: the added steps depend on scan too.
    return f"{sum(1 for k in fixed if k.startswith('fix-'))} fixes verified"


@w.task("dyn-notify")
def notify(ctx: TaskContext, summary: dict) -> str:
    return f"{summary['repo']}: {summary['problems']} problems found"


if __name__ == "__main__":
    w.run()
