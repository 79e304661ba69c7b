"""Workers for examples/on-failure: charge (on_failure: tell-support) -> ship -> close.

Run with:  dagnats worker examples/on-failure/worker.py
"""

from typing import Any

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Order(msgspec.Struct):
    order_id: str
    card: str
    support_down: bool = False


@w.task("checkout-charge")
def charge(ctx: TaskContext, order: Order) -> dict:
    if order.card == "declined":
        raise RuntimeError(f"card declined for order {order.order_id}")
    return {"order_id": order.order_id, "charged": True}


@w.task("checkout-ship")
def ship(ctx: TaskContext, charged: dict) -> str:
    return f"shipped {charged['order_id']}"


@w.task("checkout-close")
def close(ctx: TaskContext, shipped: Any) -> str:
    # `shipped` is null when `ship` was skipped because `charge` was recovered.
    return "order closed" if shipped else "order closed without shipping"


@w.task("checkout-tell-support")
def tell_support(ctx: TaskContext, failure: dict) -> str:
    # The input of an on_failure handler: failed_step, error, attempts, input.
    order = failure["input"]
    if order.get("support_down"):
        raise RuntimeError("support desk unreachable")
    return f"support told: {failure['failed_step']} failed after {failure['attempts']} attempts: {failure['error']}"


if __name__ == "__main__":
    w.run()
