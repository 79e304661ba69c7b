"""Latency summaries: nearest-rank percentiles over a list of seconds, reported in ms."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99, mean and max of latencies given in seconds, as milliseconds."""
    if not seconds:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def rate(count: int, elapsed: float) -> float | None:
    """Events per second, or None when nothing was timed."""
    if count <= 0 or elapsed <= 0:
        return None
    return round(count / elapsed, 1)
