"""``dagnats reactive serve FILE.py``: the reactive engine as its own process, like a worker.

Why a process of its own rather than ``dagnats serve --reactive module:attr``:
a reactive workflow's conditions, payload builders and mutators are user code;
run inside the DAG engine, a slow or crashing rule would stall or kill the
engine's hot path for every run. Here it runs beside it, like ``dagnats worker``,
writes only its own executions' histories (same stream, same fence), and can be
restarted or kill -9'd on its own; ``run status|events|inspect`` read those
histories through the engine as for any run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import nats

from dagnats.domain.errors import DagnatsError
from dagnats.domain.reactive.registry import ReactiveRegistry
from dagnats.domain.reactive.workflow import ReactiveWorkflow

from .. import metrics
from ..wire.connection import nats_url, server_list
from .runtime import ReactiveRuntime

log = logging.getLogger("dagnats.reactive")
READY = "reactive engine ready"


class ReactiveLoadError(DagnatsError, ValueError):
    def __init__(self, path: str, cause: str) -> None:
        self.path, self.cause = path, cause
        super().__init__(f"cannot load reactive workflows from {path}: {cause}")


def load_registry(path: str) -> ReactiveRegistry:
    """The registry FILE.py defines at top level, or one holding its ReactiveWorkflow objects."""
    file = Path(path).resolve()
    if not file.is_file():
        raise ReactiveLoadError(path, "no such file")
    name = f"_dagnats_reactive_{file.stem}_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ReactiveLoadError(path, "not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except DagnatsError:
        raise
    except Exception as err:
        raise ReactiveLoadError(path, f"{type(err).__name__}: {err}") from err
    values = list(vars(module).values())
    registries = [v for v in values if isinstance(v, ReactiveRegistry)]
    if registries:
        return registries[0]
    registry = ReactiveRegistry()
    for wf in (v for v in values if isinstance(v, ReactiveWorkflow)):
        registry.register(wf)
    if not registry.all():
        raise ReactiveLoadError(path, "it defines no ReactiveRegistry and no ReactiveWorkflow")
    return registry


async def serve(path: str, url: str | None = None, clock: Callable[[], str] | None = None) -> None:
    """Serve FILE.py's workflows until SIGINT/SIGTERM; ``clock`` (RFC3339 now) is the runtime's,
    for cooldowns and deadlines (tests pass a fake one)."""
    registry = load_registry(path)
    nc = await nats.connect(servers=server_list(nats_url(url)), max_reconnect_attempts=-1)
    runtime = ReactiveRuntime(nc, registry, clock) if clock else ReactiveRuntime(nc, registry)
    await runtime.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s: %s", READY, ", ".join(registry.list()))
    await stop.wait()
    await runtime.stop()
    await nc.drain()
    metrics.shutdown()  # the last OTLP export
