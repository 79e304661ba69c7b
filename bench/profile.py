"""Sampling the engine with py-spy while the load runs, and summarising the samples.

`Profiler.start(pid)` runs ``py-spy record --format raw --threads --nonblocking``
on the engine (100 Hz, idle threads not sampled: a sample is a thread on the
CPU or runnable); `stop()` sends it SIGINT, which makes py-spy write the
collapsed stacks, and returns `summarise(...)` of them: the share of samples
per thread kind, per leaf function (self time), per function anywhere on the
stack (inclusive time) and per package of the leaf frame.
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


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_path: Path, rate: int = 100) -> None:
        self.out_path, self.rate = out_path, rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = out_path.with_suffix(".log")

    def start(self, pid: int) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                 "--threads", "--gil", "--full-filenames", "--nonblocking", "--output", str(self.out_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if not self.out_path.exists():
            return {"error": self.log_path.read_text(errors="replace")[-2000:]}
        return summarise(self.out_path.read_text(errors="replace"), str(self.out_path))


def _frame(text: str) -> tuple[str, str]:
    """('func (short/file.py)', 'package') of one py-spy frame."""
    match = _FRAME.match(text.strip())
    if not match:
        return text.strip(), "?"
    file = match["file"]
    return f"{match['func']} ({_short(file)})", _package(file)


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _package(file: str) -> str:
    short = _short(file)
    if "/work/main/" in file or short.startswith(("domain/", "actors/", "infra/")):
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
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        threads[_thread_kind(frames[0])] += count
        named = [_frame(f) for f in frames[1:]] or [("(no python frame)", "?")]
        leaf[named[-1][0]] += count
        packages[named[-1][1]] += count
        for func in {name for name, _ in named}:
            inclusive[func] += count

    def shares(counter: Counter, n: int = top) -> list[list]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)]

    if not total:
        return {"samples": 0, "raw_file": path}
    return {
        "samples": total, "raw_file": path,
        "threads": shares(threads, 8), "self": shares(leaf), "inclusive": shares(inclusive, 25),
        "packages": shares(packages, 12),
    }


if __name__ == "__main__":  # summarise a saved file: python -m bench.profile FILE
    import json

    print(json.dumps(summarise(Path(sys.argv[1]).read_text(), sys.argv[1]), indent=1))
