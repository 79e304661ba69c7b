"""Workers for examples/sub-workflow: the parent checkout and its two child workflows.

Run with:  dagnats worker examples/sub-workflow/worker.py
"""

import time

import msgspec

from dagnats.infra.worker import Permanent, TaskContext, Worker

w = Worker()


class Order(msgspec.Struct):
    order_id: str
    total: float


# ---- the parent: checkout ----


@w.task("sub-charge")
def charge(ctx: TaskContext, order: Order) -> dict:
    return {"order_id": order.order_id, "total": order.total, "charged": True}


@w.task("sub-confirm")
def confirm(ctx: TaskContext, results: dict) -> str:
    # Two dependencies: {"invoice": <the child's output>, "archive": {"child_run_id": ...}}.
    return f"order confirmed; invoice {results['invoice']['invoice']}, archive run {results['archive']['child_run_id']}"


# ---- the child: make-invoice (its input is the parent step's input) ----


@w.task("sub-render")
def render(ctx: TaskContext, charged: dict) -> dict:
    if charged["total"] < 0:
        raise Permanent(f"cannot invoice a negative total ({charged['total']})")
    return {"invoice": f"INV-{charged['order_id']}", "total": charged["total"]}


@w.task("sub-send")
def send(ctx: TaskContext, invoice: dict) -> dict:
    return {**invoice, "sent": True}


# ---- the detached child: archive-order ----


@w.task("sub-archive")
def archive(ctx: TaskContext, charged: dict) -> str:
    time.sleep(3)  # the parent does not wait for this
    return f"archived {charged['order_id']}"


if __name__ == "__main__":
    w.run()
