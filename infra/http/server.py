"""uvicorn inside ``dagnats serve``'s own asyncio loop, on a socket bound here.

Binding the socket ourselves lets serve tell "the port is taken" from any
other failure (uvicorn would exit the process) and learn the port picked for
``:0``. uvicorn's own signal handling is not used: serve owns SIGINT/SIGTERM
and stops the server as one step of its shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger("dagnats.http")

DEFAULT_ADDRESS = "127.0.0.1:8080"


class AddressTaken(RuntimeError):
    """An --http address given explicitly that cannot be listened on."""


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); ``off`` is None."""
    text = text.strip()
    if text.lower() in ("off", "none", "no", "false", "0", ""):
        return None
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http {text!r}: expected HOST:PORT, :PORT, PORT or off")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (OSError if the address is taken or not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        self.app_state = getattr(getattr(app, "app", app), "state", None)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
        self.server = uvicorn.Server(config)
        self._main: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self.server.config.load()
        self.server.lifespan = self.server.config.lifespan_class(self.server.config)
        await self.server.startup(sockets=[self.sock])
        self._main = asyncio.create_task(self.server.main_loop(), name="http-server")

    async def stop(self) -> None:
        bridge = getattr(self.app_state, "bridge", None)
        if bridge is not None:  # tasks held for HTTP workers go back to the queue at once
            await bridge.close()
        self.server.should_exit = True
        if self._main is not None:
            with contextlib.suppress(Exception):
                await self._main
        await self.server.shutdown(sockets=[self.sock])
        self.sock.close()


async def start_http(plane: Any, address: str | None) -> HttpServer | None:
    """Serve the HTTP surface over ``plane`` at ``address`` (None: the default address,
    skipped with a warning if it is taken; ``off``: not at all)."""
    from .app import build_app

    explicit = address is not None
    parsed = parse_address(address) if address is not None else parse_address(DEFAULT_ADDRESS)
    if parsed is None:
        return None
    try:
        sock = bind(*parsed)
    except OSError as err:
        if explicit:
            raise AddressTaken(f"--http {address}: cannot listen there ({err.strerror or err})") from None
        log.warning(
            "HTTP API not started: %s:%d is taken (%s); pass --http HOST:PORT, or --http off",
            *parsed,
            err.strerror or err,
        )
        return None
    server = HttpServer(build_app(plane), sock)
    await server.start()
    return server
