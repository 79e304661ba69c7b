"""Workers for examples/fan-out: upload -> (small, medium, large) -> publish.

Run with:  dagnats worker examples/fan-out/worker.py
"""

import time

import msgspec

from dagnats.infra.worker import TaskContext, Worker

# At most max_concurrent handlers run at once in this process (10 is the
# default): room for the three resizes together.
w = Worker(max_concurrent=10)


class Resize(msgspec.Struct):
    image: str
    width: int


@w.task("fanout-upload")
def upload(ctx: TaskContext, name: str) -> dict:
    return {"image": f"s3://uploads/{name}"}


@w.task("fanout-resize")
def resize(ctx: TaskContext, job: Resize) -> str:
    time.sleep(2)  # the three resizes overlap: the run takes ~2 s, not ~6 s
    return f"{job.image}@{job.width}w"


@w.task("fanout-publish")
def publish(ctx: TaskContext, sizes: dict[str, str]) -> dict[str, str]:
    # Several dependencies and no template: the input is {step_id: output}.
    return sizes


if __name__ == "__main__":
    w.run()
