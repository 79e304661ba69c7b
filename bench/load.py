"""Closed-loop load: a fixed number of runs in flight until a count or a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .stats import latency_summary, rate


async def closed_loop(one: Callable[[], Awaitable[float]], runs: int, concurrency: int, max_seconds: float) -> dict:
    """`runs` runs, `concurrency` in flight at a time; throughput and latency.

    A run that fails or times out is counted, not retried; no new run starts
    after `max_seconds`.
    """
    latencies: list[float] = []
    failures: list[str] = []
    started = 0
    deadline = time.perf_counter() + max_seconds

    async def lane() -> None:
        nonlocal started
        while started < runs and time.perf_counter() < deadline:
            started += 1
            try:
                latencies.append(await one())
            except Exception as err:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(err).__name__}: {err}")

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "runs": len(latencies),
        "failed": len(failures),
        "first_failures": failures[:3],
        "elapsed_s": round(elapsed, 2),
        "runs_per_s": rate(len(latencies), elapsed),
        **latency_summary(latencies),
    }
