"""Workers for examples/planner: plan (returns the steps to run) -> report.

Run with:  dagnats worker examples/planner/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()

TEMPERATURES = {"paris": 14, "rome": 19, "oslo": 6, "cairo": 27}


class Request(msgspec.Struct):
    cities: list[str]
    extra_task: str = ""


@w.task("planner-plan")
def plan(ctx: TaskContext, req: Request) -> dict:
    # A plan is {"steps": [StepDef, ...]}, ids local to the plan; the engine
    # prefixes them with "plan-" and runs them as steps of this run.
    fetches = [{"id": f"fetch-{city}", "task": "planner-fetch", "input": {"city": city}} for city in req.cities]
    compare = {"id": "compare", "task": "planner-compare", "depends_on": [f["id"] for f in fetches]}
    steps = [*fetches, compare]
    if req.extra_task:  # a task outside allowed_tasks: the engine refuses the plan
        steps.append({"id": "extra", "task": req.extra_task})
    return {"steps": steps}


@w.task("planner-fetch")
def fetch(ctx: TaskContext, where: dict) -> dict:
    return {"city": where["city"], "celsius": TEMPERATURES.get(where["city"], 0)}


@w.task("planner-compare")
def compare(ctx: TaskContext, readings: dict) -> dict:
    # Several dependencies: {"plan-fetch-paris": {...}, "plan-fetch-rome": {...}, ...}.
    warmest = max(readings.values(), key=lambda r: r["celsius"])
    return {"warmest": warmest["city"], "cities": len(readings)}


@w.task("planner-report")
def report(ctx: TaskContext, planned: dict) -> str:
    # The planner's output: the outputs of its plan's last steps, by id.
    result = planned["plan-compare"]
    return f"warmest of {result['cities']} cities: {result['warmest']}"


if __name__ == "__main__":
    w.run()
