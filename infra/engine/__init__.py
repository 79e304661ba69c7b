"""The engine process: the inbox consumer and run actors' ports, the owned read
model, the control plane, admission, the embedded nats-server, and ``serve``.

Nothing here is imported by the worker SDK or the client: both speak only
the wire contract (``dagnats.infra.wire``).
"""

from .engine import Engine

__all__ = ["Engine"]
