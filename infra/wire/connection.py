"""Where NATS is: the URL the CLI, the SDK and ``dagnats serve`` agree on."""

from __future__ import annotations

import os

DEFAULT_URL = "nats://127.0.0.1:4222"


def nats_url(url: str | None = None) -> str:
    """``url``, else ``DAGNATS_NATS_URL``, else the local default."""
    return url or os.environ.get("DAGNATS_NATS_URL") or DEFAULT_URL


def server_list(url: str) -> list[str]:
    """A NATS URL, or several separated by commas (the nodes of a cluster)."""
    return [part.strip() for part in url.split(",") if part.strip()]
