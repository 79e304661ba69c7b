"""Workers for examples/python-client.

Run with:  dagnats worker examples/python-client/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Line(msgspec.Struct):
    item: str
    qty: int
    unit_price: float


class Order(msgspec.Struct):
    customer: str
    lines: list[Line]


@w.task("client-price")
def price(ctx: TaskContext, order: Order) -> dict:
    total = sum(line.qty * line.unit_price for line in order.lines)
    return {"customer": order.customer, "total": round(total, 2)}


@w.task("client-render")
def render(ctx: TaskContext, priced: dict) -> str:
    return f"INVOICE for {priced['customer']}: {priced['total']:.2f} EUR"


if __name__ == "__main__":
    w.run()
