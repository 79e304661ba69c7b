"""``dagnats serve``: embedded nats-server (or an external one) + engine + control plane."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

import nats

from .. import metrics
from ..http import metrics as http_metrics
from ..http.server import start_http
from ..tracing import flush, setup_tracing
from ..triggers import TriggerService, start_with
from ..wire.connection import server_list
from . import drill_hooks
from .control import ControlPlane
from .engine import Engine
from .server import NatsServer
from .trace_projector import start_projector

log = logging.getLogger("dagnats.serve")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dagnats"


async def serve(
    url: str,
    data_dir: Path | None,
    external: bool,
    max_live: int = 512,
    ready_file: Path | None = None,
    replicas: int | None = None,
    partitions: int | None = None,
    http: str | None = None,
) -> None:
    """``http``: where the HTTP API listens (``HOST:PORT``, or ``off``; None: the default
    127.0.0.1:8080, skipped with a warning if taken).

    ``replicas``: copies of every stream and bucket (default 3 when the server is part of
    a cluster, else 1). ``partitions``: how many partitions runs are divided into, used
    only when the resources are first created (the number is recorded and fixed)."""
    setup_tracing("dagnats-engine")
    server = None
    if not external:
        parsed = urlparse(url)
        data_dir = data_dir or default_data_dir()
        server = NatsServer(data_dir / "jetstream", host=parsed.hostname or "127.0.0.1", port=parsed.port or 4222)
        # A serve killed with -9 leaves its nats-server running: take it down first.
        await asyncio.to_thread(server.stop_orphan)
        await server.start()
        _say(f"nats-server started on {server.url} (JetStream in {data_dir}, sync_interval: always)")
        url = server.url
    await _reachable(url)
    nc = await nats.connect(server_list(url), max_reconnect_attempts=-1, reconnect_time_wait=1)
    if replicas is None:
        replicas = 3 if (nc._server_info or {}).get("cluster") else 1
    engine = Engine(nc, max_live=max_live, replicas=replicas, partitions=partitions)
    api = ControlPlane(nc, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # What started, stopped in reverse (each bounded: a shutdown must end even if NATS
    # stops answering); a start that failed half-way stops only what it had started.
    started: list[tuple[Callable[[], Awaitable[object]], float, str]] = []
    try:
        metrics.setup_metrics("dagnats-engine")  # in memory for /metrics; OTLP if configured
        started.append((_telemetry_flushed, 10, "telemetry"))
        await engine.start()
        started.append((engine.stop, 25, "engine"))
        drill_hooks.install(engine.ports)  # no-op unless the drill asked for poison runs
        await api.start()
        started.append((api.stop, 8, "control plane"))
        triggers = TriggerService(nc, start_with(api))
        await triggers.start()
        started.append((triggers.stop, 3, "triggers"))
        http_metrics.set_renderer(metrics.prometheus_text)  # the engine's metrics at /metrics
        web = await start_http(api, http)
        if web is not None:
            started.append((web.stop, 5, "HTTP API"))
            _say(f"HTTP API on {web.url} (docs at {web.url}/docs, console at {web.url}/console/)")
        projector = await start_projector(nc.jetstream())
        if projector is not None:
            started.append((projector.stop, 5, "trace projector"))
        _say(f"engine ready (pid {os.getpid()}); control plane on dagnats.api.* at {url}")
        if ready_file:
            ready_file.write_text(url)
        await stop.wait()
        _say("shutting down")
    finally:
        for step, seconds, what in reversed(started):
            await _bounded(step(), seconds, what)
        if not await _bounded(nc.drain(), 5, "NATS drain"):
            await _bounded(nc.close(), 2, "NATS close")
        if server is not None:
            await server.stop()
        _say("stopped")


async def _telemetry_flushed() -> None:
    await asyncio.to_thread(flush)
    await asyncio.to_thread(metrics.shutdown)


async def _bounded(step, seconds: float, what: str) -> bool:
    try:
        await asyncio.wait_for(step, seconds)
        return True
    except Exception as err:  # including a timeout: log it and carry on shutting down
        log.warning("%s did not stop cleanly: %s", what, err.__class__.__name__)
        return False


async def _reachable(url: str) -> None:
    """Fail fast if nothing answers at ``url``; once up, the engine reconnects forever."""
    # A plain TCP probe: nats-py retries a first connect on its own, logging each failure.
    failure: BaseException | None = None
    for server in server_list(url):
        parsed = urlparse(server)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 4222), 3
            )
        except (TimeoutError, OSError) as err:
            failure = err
            continue
        writer.close()
        return
    raise OSError(f"no NATS server answers ({failure.__class__.__name__})")


def _say(text: str) -> None:
    print(f"dagnats: {text}", file=sys.stderr, flush=True)
