"""The map benchmark's worker: list -> each (one task per element) -> sum, up to 100 at a time.

Run by bench/map.py as ``dagnats worker bench/map_worker.py --nats-url URL``;
``BENCH_MAP_ITEMS`` is how many elements ``list`` returns.
"""

import os

from dagnats.infra.worker import TaskContext, Worker

ITEMS = int(os.environ.get("BENCH_MAP_ITEMS", "10000"))

w = Worker(max_concurrent=int(os.environ.get("BENCH_WORKER_CONCURRENCY", "100")))


@w.task("list")
async def list_items(ctx: TaskContext) -> list[int]:
    return list(range(ITEMS))


@w.task("each")
async def add_one(ctx: TaskContext, n: int) -> int:
    return n + 1


@w.task("sum")
async def total(ctx: TaskContext, numbers: list[int]) -> int:
    return sum(numbers)


if __name__ == "__main__":
    w.run()
