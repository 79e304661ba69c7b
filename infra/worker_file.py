"""``dagnats worker FILE.py``: import a user's file and find the one Worker it defines.

The file defines one ``Worker`` at top level and calls ``w.run()`` only under
``if __name__ == "__main__":``; a ``run()`` at import time is an error
(``loading`` says a file is being imported).
"""

from __future__ import annotations

import importlib.util
import secrets
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from dagnats.domain.errors import WorkerLoadError

from .task_context import describe

if TYPE_CHECKING:
    from .worker import Worker

# Set while load_worker imports a file: run() at import time is then an error.
loading: ContextVar[str | None] = ContextVar("dagnats_loading_worker", default=None)


def load_worker(path: str) -> Worker:
    """Import the Python file at ``path`` and return the one Worker it defines at top level."""
    from .worker import Worker

    file = Path(path).resolve()
    if not file.is_file():
        raise WorkerLoadError(path, cause="no such file")
    name = f"_dagnats_worker_{file.stem}_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise WorkerLoadError(path, cause="not a Python file")
    module = importlib.util.module_from_spec(spec)
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    sys.modules[name] = module  # dataclasses and msgspec resolve annotations through it
    token = loading.set(path)
    try:
        spec.loader.exec_module(module)
    except WorkerLoadError:
        raise
    except Exception as err:
        sys.modules.pop(name, None)
        raise WorkerLoadError(path, cause=describe(err)) from err
    finally:
        loading.reset(token)
    found: dict[int, list[str]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Worker):
            found.setdefault(id(value), []).append(attr)
    if len(found) != 1:
        raise WorkerLoadError(path, names=[names[0] for names in found.values()])
    return next(v for v in vars(module).values() if isinstance(v, Worker))
