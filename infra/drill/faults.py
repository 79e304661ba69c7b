"""The drill's fault schedule: which process is killed when, drawn from one seed.

Theory of operation. `schedule(seed, kinds, ...)` draws every fault up front
from `random.Random(seed)`: its kind, the moment (seconds after the load
starts), which engine or worker, and how long the process stays down. The
same seed and options give the same schedule, so a failing drill is re-run
with the seed it printed. A NATS fault targets the node leading the history
stream when it fires (in a cluster), else the only node: that choice is
made at run time and recorded in the fault's outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dagnats.domain.errors import InvalidInput

KINDS = ("engine", "worker", "nats")
# How long a killed process stays down before it is started again.
DOWN_FOR = {"engine": 1.0, "worker": 0.5, "nats": 3.0}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the first run was started
    kind: str  # "engine", "worker" or "nats"
    target: int  # index among the engines or workers (nats: chosen when it fires)
    down_for: float


def parse_kinds(text: str) -> tuple[str, ...]:
    """`engine,worker,nats` (any subset; "" or "none" for no faults)."""
    if text.strip() in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidInput(f"unknown fault kind {', '.join(unknown)}: choose from {', '.join(KINDS)}")
    return kinds


def schedule(
    seed: int,
    kinds: tuple[str, ...],
    span: float,
    engines: int,
    workers: int,
    per_kind: int = 1,
) -> list[Fault]:
    """`per_kind` faults of each kind at random moments within the first `span` seconds of load.

    Faults of one kind are at least their down time plus 2 s apart, so a process
    is back before it is killed again.
    """
    rng = random.Random(seed)
    faults: list[Fault] = []
    for kind in kinds:
        count = {"engine": engines, "worker": workers}.get(kind, 1)
        slot = span / max(per_kind, 1)
        for n in range(per_kind):
            lo = 0.5 + n * slot
            hi = max(lo, (n + 1) * slot - DOWN_FOR[kind] - 2.0)
            at = round(rng.uniform(lo, hi), 2)
            faults.append(Fault(at, kind, rng.randrange(max(count, 1)), DOWN_FOR[kind]))
    return sorted(faults, key=lambda f: (f.at, f.kind))
