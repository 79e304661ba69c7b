"""Worker for examples/idempotency.

Run with:  dagnats worker examples/idempotency/worker.py
"""

from typing import Any

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


@w.task("idem-charge")
def charge(ctx: TaskContext, data: Any) -> str:
    order = (data or {}).get("order", {}) if isinstance(data, dict) else {}
    return f"charged order {order.get('id')} in run {ctx.run_id}"


if __name__ == "__main__":
    w.run()
