"""The general worker for examples/worker-groups: prepare and report (no group).

Run with:  dagnats worker examples/worker-groups/worker.py
"""

from dagnats.infra.worker import TaskContext, Worker

w = Worker(worker_id="cpu-1")


@w.task("groups-prepare")
def prepare(ctx: TaskContext, dataset: str) -> dict:
    return {"dataset": dataset, "rows": 1000, "prepared_by": ctx.worker_id}


@w.task("groups-report")
def report(ctx: TaskContext, trained: dict) -> str:
    return f"model trained on {trained['rows']} rows by {trained['trained_by']}"


if __name__ == "__main__":
    w.run()
