"""Worker for examples/limits: slow enough tasks to watch the limits hold them.

Run with:  dagnats worker examples/limits/worker.py
"""

import asyncio
from typing import Any

from dagnats.infra.worker import TaskContext, Worker

w = Worker(max_concurrent=16)


async def _work(ctx: TaskContext, data: Any, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"step": ctx.step_id, "input": data}


@w.task("limits-call")
async def call(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 0.1)


@w.task("limits-notify")
async def notify(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 0.1)


@w.task("limits-render")
async def render(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 5)


@w.task("limits-build")
async def build(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 5)


@w.task("limits-plan")
async def plan(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 0.1)


@w.task("limits-deploy")
async def deploy(ctx: TaskContext, data: Any) -> dict[str, Any]:
    return await _work(ctx, data, 5)


if __name__ == "__main__":
    w.run()
