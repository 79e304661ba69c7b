"""The engine benchmark's worker: three no-op tasks, up to 100 at a time.

Run by the benchmark as ``dagnats worker bench/noop_worker.py --nats-url URL``.
The handlers are async so no thread-pool hop is measured: only the SDK.
"""

import os

from dagnats.infra.worker import TaskContext, Worker

w = Worker(max_concurrent=int(os.environ.get("BENCH_WORKER_CONCURRENCY", "100")))


@w.task("noop_a")
async def noop_a(ctx: TaskContext) -> None:
    return None


@w.task("noop_b")
async def noop_b(ctx: TaskContext) -> None:
    return None


@w.task("noop_c")
async def noop_c(ctx: TaskContext) -> None:
    return None


if __name__ == "__main__":
    w.run()
