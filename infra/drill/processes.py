"""Detached processes of a local deployment: started, found again and stopped by PID.

Theory of operation. `dagnats cluster up` starts nats-servers and engines
that outlive the command, so each one is recorded as a `Spawned`: its PID and
the exact command line it was started with (as /proc shows it). Any later
signal goes to that PID only while /proc still shows that command line, so a
PID the kernel has since given to another process is never touched. Output
goes to a log file per process; readiness is a line in that log.

The drill starts the same kind of process as children; it keeps the `Popen`
to reap them, and uses the same record to kill -9 and restart them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagnats.domain.errors import DagnatsError

STOP_GRACE = 10.0


class ProcessError(DagnatsError, RuntimeError):
    """A process of the deployment did not start, or did not become ready."""

    def __init__(self, name: str, problem: str, log: Path | None = None) -> None:
        self.name, self.log = name, log
        tail = ""
        if log is not None:
            lines = _tail(log, 8)
            tail = "".join(f"\n  {line}" for line in lines) if lines else ""
            tail = f" (log {log}){tail}"
        super().__init__(f"{name}: {problem}{tail}")


@dataclass
class Spawned:
    """One process of the deployment, as recorded in the state file."""

    role: str  # "nats", "engine" or "worker"
    name: str
    argv: list[str]
    log: str
    pid: int = 0
    cmdline: str = ""
    env: dict[str, str] = field(default_factory=dict)  # only what differs from os.environ
    port: int | None = None
    http_port: int | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "_popen"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spawned:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "_popen"})

    @property
    def alive(self) -> bool:
        """True while our process runs (the PID still shows the recorded command line)."""
        if self._popen is not None and self._popen.poll() is not None:
            return False
        return bool(self.pid) and is_alive(self.pid) and cmdline_of(self.pid) == self.cmdline

    def start(self) -> Spawned:
        """Start the process detached (own session), output appended to its log."""
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.pid = self._popen.pid
        self.cmdline = _wait_cmdline(self.pid, self.argv)
        return self

    def wait_ready(self, line: str, timeout: float, since: int = 0) -> None:
        """Wait until the log shows `line` (after byte offset `since`); fail if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if line in _read_from(Path(self.log), since):
                return
            if not self.alive:
                code = self._popen.poll() if self._popen is not None else None
                raise ProcessError(self.name, f"exited (code {code}) before it was ready", Path(self.log))
            if time.monotonic() > deadline:
                raise ProcessError(self.name, f"not ready within {timeout:g} s", Path(self.log))
            time.sleep(0.05)

    def log_size(self) -> int:
        try:
            return Path(self.log).stat().st_size
        except OSError:
            return 0

    def kill(self) -> None:
        """kill -9, as a crash would; waits until the process is gone."""
        self.signal(signal.SIGKILL)
        self._wait_gone(10.0)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if not self.alive:
            self._reap()
            return
        self.signal(signal.SIGTERM)
        if not self._wait_gone(grace):
            self.kill()

    def signal(self, sig: int) -> bool:
        """Send `sig` if the PID is still ours; False if it is not (gone or reused)."""
        if not self.alive:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        return True

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(block=False)
            if not self.alive:
                self._reap()
                return True
            time.sleep(0.05)
        return False

    def _reap(self, block: bool = True) -> None:
        if self._popen is None:
            return
        if block:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(5.0)
        else:
            self._popen.poll()


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline_of(pid: int) -> str:
    """The command line /proc shows for `pid`, arguments joined by spaces ("" if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_cmdline(pid: int, argv: list[str]) -> str:
    # Right after fork /proc may still show the parent's command line: wait for the exec.
    wanted = " ".join(argv)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        shown = cmdline_of(pid)
        if shown == wanted or not is_alive(pid):
            return wanted
        time.sleep(0.01)
    return cmdline_of(pid) or wanted


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: Path, count: int) -> list[str]:
    return _read_from(path, 0).splitlines()[-count:]
