"""Where the engine's run actors run: on greenlets of the host's thread, or on threads.

The engine's ports name a host (``ports.host``: its event loop's ``LoopPost``), and its
directory and run actors are hosted there (``actors.hosted``): no thread per actor and no
hand-off between threads per fact. Ports without one (in memory, in tests) get the same
classes on threads of their own. The actors' code is the same either way; only their
runtime differs.
"""

from __future__ import annotations

from typing import Any

import pykka

from .directory import QUARANTINE_RETRY, STOP_INDEXING, RunDirectory
from .hosted import HostedActor, host_of, wait_until
from .ports import Ports
from .run import RunActor

__all__ = ["HostedRunActor", "HostedRunDirectory", "start_directory"]


def start_directory(
    ports: Any, timers: Any, max_live: int = 512, quarantine_retry: float = QUARANTINE_RETRY
) -> pykka.ActorRef:
    """The directory of ``ports``' runs: hosted with its run actors if the ports name a host."""
    kind = HostedRunDirectory if host_of(ports) is not None else RunDirectory
    return kind.start(ports, timers, max_live, quarantine_retry)


class HostedRunActor(HostedActor, RunActor):
    """A RunActor on a greenlet of the host's thread (``ports.host``), not a thread."""

    def __init__(
        self, run_id: str, ports: Ports, directory: Any, timers: Any, fresh: bool = False, recovering: bool = False
    ) -> None:
        RunActor.__init__(self, run_id, ports, directory, timers, fresh, recovering)
        self.host = host_of(ports)  # type: ignore[assignment]


class HostedRunDirectory(HostedActor, RunDirectory):
    """The directory on a greenlet of the host's thread, beside its run actors: a delivery
    reaches its run without changing threads."""

    run_actor = HostedRunActor

    def __init__(
        self, ports: Ports, timers: Any, max_live: int = 512, quarantine_retry: float = QUARANTINE_RETRY
    ) -> None:
        RunDirectory.__init__(self, ports, timers, max_live, quarantine_retry)
        self.host = host_of(ports)  # type: ignore[assignment]

    def _wait_stopped(self, refs: list[pykka.ActorRef]) -> None:
        # Its run actors need this thread to stop: park, do not block it.
        wait_until(lambda: all(not ref.is_alive() for ref in refs), STOP_INDEXING, self.host)
