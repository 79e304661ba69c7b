"""dagnats: a durable workflow engine on NATS JetStream."""

__version__ = "0.1.0"
