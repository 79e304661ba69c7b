"""``GET /metrics``: Prometheus text.

HOOK for the tracing/metrics work: a module that can render the engine's
metrics as Prometheus text registers it with ``set_renderer(fn)`` (``fn()``
returns the exposition text). Until one is registered, ``/metrics`` serves
the few gauges this layer can see for itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_renderer: Callable[[], str] | None = None


def set_renderer(render: Callable[[], str] | None) -> None:
    """Install (or, with None, remove) the function whose text ``/metrics`` serves."""
    global _renderer
    _renderer = render


def render(plane: Any) -> str:
    """This engine's gauges, then the installed renderer's text (the engine's OpenTelemetry metrics)."""
    extra = _renderer() if _renderer is not None else ""
    live = plane.reader.live()
    active = sum(1 for r in live if not r.is_terminal)
    return (
        "# HELP dagnats_up 1 while the engine serves.\n# TYPE dagnats_up gauge\ndagnats_up 1\n"
        "# HELP dagnats_live_runs Runs with a live actor in this engine.\n# TYPE dagnats_live_runs gauge\n"
        f"dagnats_live_runs {len(live)}\n"
        "# HELP dagnats_active_runs Live runs not yet finished.\n# TYPE dagnats_active_runs gauge\n"
        f"dagnats_active_runs {active}\n"
    ) + extra
