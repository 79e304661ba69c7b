"""What a delivery leads to, computed before anything is written: the records to append
(facts and the decisions they led to, each record within the server's max payload),
their effects, and the state after each."""

from __future__ import annotations

from dataclasses import dataclass, field

from dagnats.domain.actions import Action
from dagnats.domain.events import Event, WorkflowStarted
from dagnats.domain.state import WorkflowRun

from .messages import Deliver


@dataclass
class Record:
    """Events to append together, the effects that follow, and the state after them."""

    events: list[Event]
    parts: list[bytes]
    actions: list[Action]
    run: WorkflowRun

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts) + len(self.parts) + 1

    def body(self) -> bytes:
        return b"[" + b",".join(self.parts) + b"]"


@dataclass
class Plan:
    records: list[Record] = field(default_factory=list)
    # Effects of facts that are recorded nowhere (they changed nothing).
    loose: list[Action] = field(default_factory=list)
    # A worker reported on an attempt not dispatched in the state it was folded into.
    early: bool = False


def repeated_start(message: Deliver, plan: Plan) -> bool:
    """A delivery opening with a start that recorded no start: the run had started before."""
    return (
        bool(message.events)
        and isinstance(message.events[0], WorkflowStarted)
        and not any(isinstance(event, WorkflowStarted) for record in plan.records for event in record.events)
    )
