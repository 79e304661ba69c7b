"""Workers for examples/wait-for-event: order -> (wait for payment) -> ship | release,
and the alert of await-threshold.

Run with:  dagnats worker examples/wait-for-event/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Order(msgspec.Struct):
    order_id: str
    item: str


class Release(msgspec.Struct):
    order: dict
    payment: dict


@w.task("wait-order")
def order(ctx: TaskContext, o: Order) -> dict:
    return {"order_id": o.order_id, "item": o.item, "reserved": True}


@w.task("wait-ship")
def ship(ctx: TaskContext, payment: dict) -> str:
    # The wait's output is the event's data.
    return f"shipped order {payment['order_id']} (paid {payment['amount']})"


@w.task("wait-release")
def release(ctx: TaskContext, job: Release) -> str:
    # Runs only when the wait timed out: its output was {"timeout": true}.
    return f"no payment for order {job.order['order_id']}: reservation released"


@w.task("wait-alert")
def alert(ctx: TaskContext, reading: dict) -> str:
    if reading.get("timeout"):
        return "no reading reached the threshold"
    return f"alert: {reading['celsius']} °C at {reading.get('sensor', '?')}"


if __name__ == "__main__":
    w.run()
