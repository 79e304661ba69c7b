"""Messages between actors: small frozen values.

``Deliver`` carries facts for one run and a ``done`` callback the shell uses
to acknowledge (True) or redeliver (False) the messages they came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dagnats.domain.actions import StartTimer
from dagnats.domain.events import Event


def _ignore(ok: bool, retry_in: float = 0.5, repeated: bool = False) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Facts for one run; ``done(True)`` acks them, ``done(False, retry_in)`` redelivers;
    ``done(True, repeated=True)``: they opened with a start, and the run had started before."""

    run_id: str
    events: tuple[Event, ...]
    done: Callable[..., None] = field(default=_ignore)


@dataclass(frozen=True, slots=True)
class Deliveries:
    """Deliveries for several runs that arrived together, told to the directory at once:
    one hand-off between threads for all of them."""

    deliveries: tuple[Deliver, ...]


def bundled(deliveries: list[Deliver]) -> Deliver | Deliveries:
    """What to tell the directory for ``deliveries`` (at least one): one message."""
    return deliveries[0] if len(deliveries) == 1 else Deliveries(tuple(deliveries))


@dataclass(frozen=True, slots=True)
class Passivate:
    """Handle what is queued, then stop (``snapshot``: saving an unfinished run's state
    first, for the snapshot index; not for a run whose partition this engine lost, whose
    new owner keeps that index)."""

    run_id: str
    snapshot: bool = True


@dataclass(frozen=True, slots=True)
class LetGo:
    """This engine lost ``partition`` (of ``partitions``): the actors of its runs stop,
    writing no more snapshots (``handed_over``: listing a young run first)."""

    partition: int
    partitions: int
    handed_over: bool = True


@dataclass(frozen=True, slots=True)
class Passivated:
    run_id: str
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Index:
    """A run still unfinished a while after its start, or when its engine stops: list it
    in the snapshot index (``wait``: before the actor handles anything else)."""

    run_id: str
    wait: bool = False


@dataclass(frozen=True, slots=True)
class IndexDue:
    """The directory's tick: index the runs started ``INDEX_AFTER`` ago that are still live."""


@dataclass(frozen=True, slots=True)
class Crashed:
    """A run actor stopped on an error. ``unavailable``: NATS did not answer (an outage,
    not a poison run: not counted towards quarantine)."""

    run_id: str
    error: str
    unavailable: bool = False


@dataclass(frozen=True, slots=True)
class Rebuild:
    """A run whose actor crashed on a NATS outage: bring it up again from its history, which
    re-issues what it waits on, whether or not anything is delivered to it meanwhile (a
    delivery whose answer was lost with the outage may never come back)."""

    run_id: str


@dataclass(frozen=True, slots=True)
class Healthy:
    """A run actor rebuilt after crashes handled a delivery: forget its crashes."""

    run_id: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    run_id: str
    timer: StartTimer
    trace_parent: str = ""


@dataclass(frozen=True, slots=True)
class DisarmTimer:
    """The run no longer waits on this timer: if it fires, nothing is delivered."""

    run_id: str
    timer_id: str


@dataclass(frozen=True, slots=True)
class TimerDue:
    run_id: str
    timer: StartTimer
    trace_parent: str = ""


@dataclass(frozen=True, slots=True)
class LiveCount:
    """Ask the directory how many run actors are alive."""
