"""Workers for examples/http-trigger: price -> (respond) -> audit.

Run with:  dagnats worker examples/http-trigger/worker.py
"""

import msgspec

from dagnats.infra.worker import Permanent, TaskContext, Worker

w = Worker()

PRICES = {"A-1": 9.99, "B-2": 24.50}


class Order(msgspec.Struct):
    sku: str
    qty: int = 1


class Call(msgspec.Struct):
    body: Order


class Envelope(msgspec.Struct):
    """The run's input: the trigger's envelope; for an http trigger, the request is at data."""

    trigger: str
    data: Call


@w.task("quote-price")
def price(ctx: TaskContext, request: Envelope) -> dict:
    order = request.data.body
    if order.sku not in PRICES:
        raise Permanent(f"unknown sku {order.sku!r}")
    return {"sku": order.sku, "qty": order.qty, "total": round(PRICES[order.sku] * order.qty, 2)}


@w.task("quote-audit")
def audit(ctx: TaskContext, response: dict) -> str:
    # The respond step's output is the response it sent: {status, headers, content_type, body}.
    return f"quoted {response['body']['total']} for {response['body']['sku']} (HTTP {response['status']})"


if __name__ == "__main__":
    w.run()
