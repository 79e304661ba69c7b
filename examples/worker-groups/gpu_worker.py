"""The gpu worker for examples/worker-groups: takes only tasks of group "gpu".

Run with:  dagnats worker examples/worker-groups/gpu_worker.py
"""

from dagnats.infra.worker import TaskContext, Worker

w = Worker(worker_id="gpu-1", groups=["gpu"])


@w.task("groups-train")
def train(ctx: TaskContext, prepared: dict) -> dict:
    return {"rows": prepared["rows"], "trained_by": ctx.worker_id}


if __name__ == "__main__":
    w.run()
