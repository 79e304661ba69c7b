"""Sampling the engine with py-spy while the load runs, and summarising the samples.

`Profiler.start(pid)` runs two ``py-spy record --format raw --threads
--nonblocking`` samplers on the engine:

* ``cpu`` (``--gil``, 100 Hz): only the thread holding the GIL is sampled, so
  the samples say where the engine's Python CPU time goes;
* ``wall`` (``--idle``, 20 Hz): every thread, waiting or not, so the samples
  say what each kind of thread (RunActor-*, RunDirectory, the asyncio
  MainThread) spends its time on, e.g. waiting for a PubAck.

`stop()` sends them SIGINT, which makes py-spy write the collapsed stacks,
and returns `summarise(...)` of each: shares of samples per thread kind, per
leaf function (self), per function anywhere on the stack (inclusive), per
package of the leaf frame, and per thread kind its "sites": the two innermost
frames of dagnats, pykka or nats code and the leaf under them, e.g.
``NatsHistoryPort.append > LoopBridge.call > Condition.wait`` (a run actor
blocked until the loop has its history append's PubAck).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^(?:thread|process) \((?P<id>[^)]*)\)(?:: (?P<name>.*))?$")


MODES = {"cpu": ["--gil", "--rate", "100"], "wall": ["--idle", "--rate", "20"]}


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_prefix: Path) -> None:
        self.out_prefix = out_prefix
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, mode: str, suffix: str = ".collapsed") -> Path:
        return self.out_prefix.with_name(f"{self.out_prefix.name}-{mode}{suffix}")

    def start(self, pid: int) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        for mode, flags in MODES.items():
            with open(self.path(mode, ".log"), "wb") as log:
                self.procs[mode] = subprocess.Popen(
                    [
                        binary,
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--threads",
                        "--full-filenames",
                        "--nonblocking",
                        *flags,
                        "--output",
                        str(self.path(mode)),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def stop(self) -> dict:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        summaries = {}
        for mode, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            out = self.path(mode)
            if out.exists():
                summaries[mode] = summarise(out.read_text(errors="replace"), str(out))
                self.path(mode, ".log").unlink(missing_ok=True)
            else:
                summaries[mode] = {"error": self.path(mode, ".log").read_text(errors="replace")[-2000:]}
        self.procs.clear()
        return summaries


def _frame(text: str) -> tuple[str, str]:
    """('func (short/file.py)', 'package') of one py-spy frame."""
    match = _FRAME.match(text.strip())
    if not match:
        return text.strip(), "?"
    file = match["file"]
    return f"{match['func']} ({_short(file)})", _package(file)


_CHECKOUT = str(Path(__file__).resolve().parent.parent) + "/"  # wherever this checkout lives


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", _CHECKOUT):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _package(file: str) -> str:
    short = _short(file)
    if file.startswith(_CHECKOUT) or short.startswith(("domain/", "actors/", "infra/")):
        return "dagnats." + short.split("/", 1)[0]
    if "site-packages/" in file:
        return short.split("/", 1)[0]
    if short.startswith(("asyncio/", "concurrent/")):
        return short.split("/", 1)[0]
    return "stdlib:" + short.split("/", 1)[0].removesuffix(".py")


def _thread_kind(text: str) -> str:
    match = _THREAD.match(text.strip())
    name = match["name"] if match and match["name"] else text.strip()
    if name.startswith("RunActor-"):
        return "RunActor-*"
    return name


def summarise(raw: str, path: str = "", top: int = 15) -> dict:
    """Shares (%) of samples from py-spy's collapsed stacks (``frame;frame;... count``)."""
    threads, leaf, inclusive, packages = Counter(), Counter(), Counter(), Counter()
    sites: dict[str, Counter] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        kind = _thread_kind(frames[0])
        threads[kind] += count
        named = [_frame(f) for f in frames[1:]] or [("(no python frame)", "?")]
        leaf[named[-1][0]] += count
        packages[named[-1][1]] += count
        for func in {name for name, _ in named}:
            inclusive[func] += count
        sites.setdefault(kind, Counter())[_site(named)] += count

    def shares(counter: Counter, n: int = top, of: int | None = None) -> list[list]:
        return [[name, round(100 * c / (of or total), 1)] for name, c in counter.most_common(n)]

    if not total:
        return {"samples": 0, "raw_file": path}
    return {
        "samples": total,
        "raw_file": path,
        "threads": shares(threads, 8),
        "self": shares(leaf),
        "inclusive": shares(inclusive, 25),
        "packages": shares(packages, 12),
        "sites": {kind: shares(sites[kind], 6, threads[kind]) for kind, _ in threads.most_common(4)},
    }


def _site(named: list[tuple[str, str]]) -> str:
    """The two innermost frames of dagnats, pykka or nats code, then the leaf: what a thread waits on."""
    ours = [name for name, package in named if package.startswith(("dagnats.", "pykka", "nats"))][-2:]
    leaf = named[-1][0]
    if leaf in ours:
        return " > ".join(_bare(name) for name in ours)
    return " > ".join([*(_bare(name) for name in ours), _bare(leaf)])


def _bare(name: str) -> str:
    return name.split(" (")[0]


if __name__ == "__main__":  # summarise a saved file: python -m bench.profile FILE
    import json

    print(json.dumps(summarise(Path(sys.argv[1]).read_text(), sys.argv[1]), indent=1))
