"""Worker for examples/sticky. Start two, with different ids:

    WORKER_ID=w1 dagnats worker examples/sticky/worker.py
    WORKER_ID=w2 dagnats worker examples/sticky/worker.py

Each step appends the id of the worker that ran it to a list, so the run's
output shows where every step ran. {"pause": N} makes each step take N s.
"""

import os
import time

import msgspec

from dagnats.infra.worker import TaskContext, Worker

# A fixed worker_id matters for sticky runs: a worker started again with the
# same id picks up the tasks that wait for it.
w = Worker(worker_id=os.environ.get("WORKER_ID"), drain_timeout=60)


class Job(msgspec.Struct):
    pause: float = 0.0


@w.task("sticky-fetch")
def fetch(ctx: TaskContext, job: Job | None) -> dict:
    pause = job.pause if job else 0.0
    time.sleep(pause)
    return {"pause": pause, "ran_on": [ctx.worker_id]}


@w.task("sticky-transform")
def transform(ctx: TaskContext, data: dict) -> dict:
    time.sleep(data["pause"])
    return {**data, "ran_on": data["ran_on"] + [ctx.worker_id]}


@w.task("sticky-store")
def store(ctx: TaskContext, data: dict) -> list[str]:
    time.sleep(data["pause"])
    return data["ran_on"] + [ctx.worker_id]


if __name__ == "__main__":
    w.run()
