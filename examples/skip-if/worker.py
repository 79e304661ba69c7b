"""Workers for examples/skip-if: check -> reorder (skipped when stock is high) -> report.

Run with:  dagnats worker examples/skip-if/worker.py
"""

from typing import Any

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Shelf(msgspec.Struct):
    item: str
    count: int


@w.task("restock-check")
def check(ctx: TaskContext, shelf: Shelf) -> dict:
    return {"item": shelf.item, "count": shelf.count}


@w.task("restock-reorder")
def reorder(ctx: TaskContext, checked: dict) -> dict:
    return {"ordered": 20 - checked["count"], "item": checked["item"]}


@w.task("restock-report")
def report(ctx: TaskContext, outputs: dict[str, Any]) -> str:
    # Several dependencies: the input is {"check": ..., "reorder": ...}.
    # A skipped step has no output, so "reorder" is null when it was skipped.
    order = outputs["reorder"]
    item = outputs["check"]["item"]
    if order is None:
        return f"{item}: {outputs['check']['count']} on the shelf, nothing ordered"
    return f"{item}: ordered {order['ordered']}"


if __name__ == "__main__":
    w.run()
