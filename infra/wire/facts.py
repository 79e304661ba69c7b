"""Facts into a run's inbox: the one way anything outside the run's owner reports.

Workers (results), the control plane (start, cancel, pause, signals,
approvals), the correlator (matched events) and fired timers all publish
an event to ``inbox.<run>`` with ``Nats-Msg-Id = <run>.<fact id>``, so
re-sending the same fact inside the dedup window stores nothing.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck

from dagnats.domain.events import Event, encode_event

from .headers import MSG_ID, TRACEPARENT
from .names import INBOX_STREAM
from .subjects import inbox_subject


def fact_msg_id(event: Event) -> str:
    return f"{event.run_id}.{event.id}"


async def publish_fact(js: JetStreamContext, event: Event, *, body: bytes | None = None) -> PubAck:
    """Store ``event`` in its run's inbox; returns the PubAck (``duplicate`` if already there).

    ``body``: the event already encoded (a caller that checked its size).
    """
    headers = {MSG_ID: fact_msg_id(event)}
    if event.trace_parent:
        headers[TRACEPARENT] = event.trace_parent
    data = body if body is not None else encode_event(event)
    return await js.publish(inbox_subject(event.run_id), data, stream=INBOX_STREAM, headers=headers)
