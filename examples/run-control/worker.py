"""Worker for examples/run-control: every step sleeps `seconds`.

Run with:  dagnats worker examples/run-control/worker.py
"""

import time

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Batch(msgspec.Struct):
    seconds: float = 3.0
    done: list[str] = []


@w.task("control-work")
def work(ctx: TaskContext, batch: Batch | None) -> Batch:
    batch = batch or Batch()
    time.sleep(batch.seconds)
    return Batch(seconds=batch.seconds, done=batch.done + [ctx.step_id])


if __name__ == "__main__":
    w.run()
