"""Workers for examples/cancel-on: pick (slow) -> pack.

Run with:  dagnats worker examples/cancel-on/worker.py
"""

import time

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


@w.task("fulfil-pick")
def pick(ctx: TaskContext, order: dict) -> str:
    time.sleep(15)  # walking the warehouse: time to publish a cancellation
    return f"picked {order['order_id']}"


@w.task("fulfil-pack")
def pack(ctx: TaskContext, picked: str) -> str:
    return f"packed ({picked})"


if __name__ == "__main__":
    w.run()
