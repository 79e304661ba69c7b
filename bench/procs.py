"""The processes a benchmark starts: nats-servers, the engine, workers.

Theory of operation. Everything started goes through one `Processes` object
that remembers it; `Processes.close()` stops it all by PID (SIGTERM, a bounded
wait, then SIGKILL), newest first. `run.py` calls `close()` in a `finally`, and
turns SIGTERM/SIGHUP into SystemExit so that `finally` also runs when the
benchmark itself is killed. Child processes write their output to a log file
in the work directory (no pipe can fill up and stall them); readiness is a
line in that log, waited for with a deadline.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dagnats.infra.engine.server import NatsServer

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child: get SIGTERM when the benchmark dies, even by SIGKILL."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildError(RuntimeError):
    """A child process died or did not get ready; carries the tail of its log."""

    def __init__(self, name: str, problem: str, log_tail: str) -> None:
        self.name = name
        super().__init__(f"{name}: {problem}\n--- last lines of its log ---\n{log_tail}")


class Child:
    """One child process with its output in `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Child:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, text: str, timeout: float) -> None:
        """Block until `text` appears in the log; raise ChildError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log_path.read_text(errors="replace"):
                return
            if not self.alive():
                raise ChildError(self.name, f"exited with code {self.proc.returncode} before {text!r}", self.tail())
            if time.monotonic() > deadline:
                raise ChildError(self.name, f"no {text!r} within {timeout:g} s", self.tail())
            time.sleep(0.05)

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise ChildError(self.name, f"exited with code {code}", self.tail())

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.proc, timeout)


def stop_pid(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM this one process, wait up to `timeout`, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Processes:
    """Every server and child a benchmark started, stopped together by `close()`."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._started: list[Child | NatsServer] = []

    def server(self, name: str, *, sync_always: bool) -> NatsServer:
        """Start a fresh nats-server (own data directory) on a free 127.0.0.1 port, with its
        monitoring port on another (``MessageMeter`` reads it)."""
        server = NatsServer(self.work_dir / name, host="127.0.0.1", port=0, sync_always=sync_always, http_port=0)
        self._started.append(server)
        server.start_sync()
        return server

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.work_dir / f"{name}.log", env)
        self._started.append(child)
        return child.start()

    def stop(self, thing: Child | NatsServer) -> None:
        if isinstance(thing, Child):
            thing.stop()
        else:
            thing.stop_sync()
        if thing in self._started:
            self._started.remove(thing)

    def close(self) -> None:
        while self._started:
            thing = self._started.pop()
            try:
                thing.stop() if isinstance(thing, Child) else thing.stop_sync()
            except Exception as err:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop {thing}: {err}", file=sys.stderr)


# -- /proc readings -------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a live process, from /proc/<pid>/status."""
    wanted = {"VmRSS", "VmHWM", "Threads"}
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                found[key] = int(value.split()[0])
    return found


def rss_mb(pid: int) -> float:
    return round(proc_status(pid)["VmRSS"] / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its ')' are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU use of some processes over a stretch of wall time, as a share of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = time.perf_counter()
        self._cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._start
        return {name: round((cpu_seconds(pid) - self._cpu[name]) / elapsed * 100, 1) for name, pid in self.pids.items()}


class MessageMeter:
    """Messages each side sent over a stretch: the server's per-connection counters
    (``/connz``), summed by who holds the connection. ``kinds`` names a connection by its
    client id or, failing that, its name's prefix (``worker-``); any other is ``rest``."""

    def __init__(self, http_port: int, by_cid: dict[int, str], by_prefix: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{http_port}/connz?limit=1024"
        self.by_cid, self.by_prefix = by_cid, by_prefix
        self._start = self._counts()

    def _kind(self, conn: dict) -> str:
        if conn["cid"] in self.by_cid:
            return self.by_cid[conn["cid"]]
        name = conn.get("name") or ""
        return next((kind for prefix, kind in self.by_prefix.items() if name.startswith(prefix)), "rest")

    def _counts(self) -> dict[int, tuple[str, int, int]]:
        with urllib.request.urlopen(self.url, timeout=5) as answer:
            conns = json.load(answer)["connections"]
        return {c["cid"]: (self._kind(c), c["in_msgs"], c["out_msgs"]) for c in conns}

    def per_run(self, runs: int) -> dict[str, dict[str, float]]:
        """Per kind: messages it sent to the server (``sent``) and was sent (``received``),
        per run. A connection opened meanwhile counts from zero."""
        totals: dict[str, list[int]] = {}
        for cid, (kind, sent, received) in self._counts().items():
            _, sent0, received0 = self._start.get(cid, (kind, 0, 0))
            total = totals.setdefault(kind, [0, 0])
            total[0] += sent - sent0
            total[1] += received - received0
        return {
            kind: {"sent": round(sent / max(1, runs), 2), "received": round(received / max(1, runs), 2)}
            for kind, (sent, received) in sorted(totals.items())
        }
