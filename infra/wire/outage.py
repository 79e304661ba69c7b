"""What NATS answers while it cannot serve a request for a moment.

A node lost, JetStream electing a stream's or the meta group's leader, a client
reconnecting: the request times out, finds no responders, or the stream answers
503 ("no response from stream", "service unavailable"). The same request may
succeed a moment later, so callers retry, answer ``Unavailable``, or (run
actors) rebuild the run without counting the failure against it.
"""

from __future__ import annotations

from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

# TimeoutError: the builtin, which nats.errors.TimeoutError (and asyncio's) subclass.
NATS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
)
