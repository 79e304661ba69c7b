"""Task messages: what the engine publishes for a step to run, and how a worker resolves it."""

from __future__ import annotations

from typing import Any

import msgspec


class TaskPayload(msgspec.Struct, frozen=True, omit_defaults=True):
    """Published to ``task.<task>[.<group>].<run>`` when a step is dispatched."""

    task_id: str
    run_id: str
    step_id: str
    attempt: int = 1
    # agent_loop: which iteration (0 for the first); map: which element.
    iteration: int = 0
    instance: int | None = None
    input: Any = None
    task: str = ""
    workflow_name: str = ""
    timeout_ns: int = 0
    traceparent: str = ""
    tracestate: str = ""
    baggage: str = ""
    # The step's metadata (role, model, ...): for the handler, as ctx.metadata.
    metadata: dict[str, str] | None = None
    step_type: str = ""


class TaskResolution(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a worker resolves a task (the bridge's shape)."""

    action: str
    output: Any = None
    error: str = ""
    failure_type: str = ""
    retry_after_ms: int = 0
    duration_ms: int = 0
    checkpoint: Any = None
    data: Any = None


TASK_DECODER = msgspec.json.Decoder(TaskPayload)
