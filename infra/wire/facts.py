"""Facts into a run's inbox: the one way anything outside the run's owner reports.

Workers (results), the control plane (start, cancel, pause, signals,
approvals), the correlator (matched events) and fired timers all publish
an event to ``inbox.<run>`` with ``Nats-Msg-Id = <run>.<fact id>`` (a worker's
report: ``.d<task message sequence>`` after it), so re-sending the same fact inside
the dedup window stores nothing.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from dagnats.domain.events import Event, encode_event

from .headers import MSG_ID, TRACEPARENT
from .names import INBOX_STREAM
from .subjects import inbox_subject


def fact_msg_id(event: Event, dispatch: int = 0) -> str:
    """``<run>.<fact id>``, and for a worker's report ``.d<dispatch>``: the stream sequence
    of the task message it answers. An attempt's task published again is another message
    (its first report was dropped as ahead of the record dispatching it, for longer than
    the engine waits: ``RunActor._early``), so the new task's report is not taken for a
    duplicate of the dropped one; a task delivered again reports under the same id."""
    return f"{event.run_id}.{event.id}.d{dispatch}" if dispatch else f"{event.run_id}.{event.id}"


def task_dispatch(msg: Msg) -> int:
    """Which publication of its attempt's task ``msg`` is: its sequence in the task stream
    (``fact_msg_id``); 0 for a message that is no JetStream delivery."""
    try:
        return msg.metadata.sequence.stream
    except Exception:  # noqa: BLE001 - no JetStream reply subject: the plain fact id
        return 0


async def publish_fact(js: JetStreamContext, event: Event, *, body: bytes | None = None, dispatch: int = 0) -> PubAck:
    """Store ``event`` in its run's inbox; returns the PubAck (``duplicate`` if already there).

    ``body``: the event already encoded (a caller that checked its size); ``dispatch``: a
    worker's report, the stream sequence of its task message (``fact_msg_id``).
    """
    headers = {MSG_ID: fact_msg_id(event, dispatch)}
    if event.trace_parent:
        headers[TRACEPARENT] = event.trace_parent
    data = body if body is not None else encode_event(event)
    return await js.publish(inbox_subject(event.run_id), data, stream=INBOX_STREAM, headers=headers)
