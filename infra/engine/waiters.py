"""Event waiters: runs waiting for an external event (wait_for_event steps, cancel_on).

(Interface for the outbox; the index and its lookups are filled in by the
correlator's module.)
"""

from __future__ import annotations

from nats.js import JetStreamContext

from dagnats.domain.actions import RegisterWaiter, RemoveWaiter


async def register_step_waiter(js: JetStreamContext, run_id: str, waiter: RegisterWaiter) -> None:
    """Store the waiter of a wait_for_event step so the correlator finds it by event name."""
    raise NotImplementedError


async def remove_step_waiter(js: JetStreamContext, run_id: str, waiter: RemoveWaiter) -> None:
    """Forget a step's waiter (its wait ended another way: timeout, cancel)."""
    raise NotImplementedError
