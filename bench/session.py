"""One benchmark session: its work directory and processes, and its results written out.

Every bench's ``main`` is the same frame around its own phases: stop on SIGTERM or
SIGHUP like on Ctrl-C (so every process it started is stopped by PID), a fresh work
directory, the phases, then the results printed (with the errors a phase recorded) and
written as ``bench/results/<name>.{json,txt}`` (and ``--out``; ``session_options`` adds the
options it takes to a bench's parser).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import machine
from bench.procs import REPO, Processes
from bench.report import _table, write

RESULTS = REPO / "bench" / "results"

Phases = Callable[[Processes, dict, str], Coroutine[Any, Any, None]]


def session_options(parser: argparse.ArgumentParser) -> None:
    """The options every bench's ``run_session`` takes: ``--out`` and ``--keep``."""
    parser.add_argument("--out", type=Path, help="also write the JSON results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server data, logs)")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_session(
    name: str,
    settings: dict,
    phases: Phases,
    render: Callable[[dict], str],
    *,
    keep: bool = False,
    out: Path | None = None,
    assess: Callable[[dict], None] | None = None,
) -> int:
    """Run ``phases(procs, results, stamp)``; ``name`` may hold ``{stamp}`` (the file name of
    the results). Exit status 1 if any phase recorded an error."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = Path(tempfile.mkdtemp(prefix="dagnats-bench-"))
    procs = Processes(work_dir)
    results: dict = {"machine": machine.describe(), "settings": settings, "errors": []}
    try:
        asyncio.run(phases(procs, results, stamp))
    except Exception as err:  # noqa: BLE001 - report what was measured so far
        traceback.print_exc()
        results["errors"].append(f"{type(err).__name__}: {err}")
    finally:
        procs.close()
        if keep:
            print(f"bench: work directory kept at {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    results["machine"]["load_average_at_end"] = machine.load_average()
    if assess is not None:
        assess(results)
    text = "\n".join([render(results), *(f"error: {err}" for err in results["errors"])])
    print(text)
    base = name.format(stamp=stamp)
    paths = [RESULTS / f"{base}.json"] + ([out] if out else [])
    write(results, paths)
    (RESULTS / f"{base}.txt").write_text(text + "\n")
    print(f"\nresults: {', '.join(str(p) for p in paths)}")
    return 1 if results["errors"] else 0


def say(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def machine_rows(results: dict, sync: str = "sync_interval: always (fsync every write)") -> list[str]:
    """The machine table every bench's report opens with."""
    m = results.get("machine", {})
    rows = [
        ["date", m.get("date", "?")],
        ["cores / cpu", f"{m.get('cores')} / {m.get('cpu', '?')}"],
        ["python / nats-server", f"{m.get('python')} / {m.get('nats_server', '?')}"],
        ["dagnats commit", m.get("dagnats_commit", "?")],
        ["load average (start -> end)", f"{m.get('load_average_at_start')} -> {m.get('load_average_at_end')}"],
        ["server sync", sync],
    ]
    return _table(["machine", ""], rows, set())
