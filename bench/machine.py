"""What the numbers were measured on: CPU, versions, load, the server's sync setting."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata

from dagnats.infra.engine.server import server_binary

from .procs import REPO


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nats_server_version() -> str:
    try:
        out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().removeprefix("nats-server: ")
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"


def git_commit() -> str:
    """The commit the engine code is at (read only; the work tree may hold changes on top)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=REPO
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats_server": nats_server_version(),
        "nats_py": metadata.version("nats-py"),
        "pykka": metadata.version("pykka"),
        "msgspec": metadata.version("msgspec"),
        "dagnats_commit": git_commit(),
        "load_average_at_start": load_average(),
    }
