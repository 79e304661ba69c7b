"""Faults the drill asks an engine for: a poison run (RELIABILITY.md §4.3, D5).

With ``DAGNATS_DRILL_POISON=<prefix>`` in its environment, an engine fails
every record of a run whose id starts with the prefix once the run has a
history (its start is recorded; the first fact after it crashes the run's
actor). The directory then quarantines the run while the engine and every
other run carry on. Only the drill sets the variable, on engines it starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dagnats.domain.errors import DagnatsError

POISON_ENV = "DAGNATS_DRILL_POISON"
log = logging.getLogger("dagnats.drill_hooks")


class PoisonedRun(DagnatsError, RuntimeError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} is poisoned by the drill ({POISON_ENV})")


def install(ports: Any) -> None:
    """Wrap ``ports.record`` when the environment asks for poison runs."""
    prefix = os.environ.get(POISON_ENV)
    if not prefix:
        return
    record = ports.record

    def poisoned(run_id: str, events: Any, body: bytes, expected_seq: int, *rest: Any, **kw: Any) -> int:
        if run_id.startswith(prefix) and expected_seq > 0:
            raise PoisonedRun(run_id)
        return record(run_id, events, body, expected_seq, *rest, **kw)

    ports.record = poisoned
    log.warning("drill: runs whose id starts with %r crash their actor after their start", prefix)
