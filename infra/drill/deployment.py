"""A local deployment: nats-server nodes, `dagnats serve --external` engines, workers.

Theory of operation. A deployment lives in one directory: a node per
sub-directory (its config, JetStream store and log), an engine and worker log
each, and `state.json`, which records every process (`Spawned`: role, name,
PID, command line, ports, log). `dagnats cluster up` writes the state and
leaves the processes running; `cluster status` and `cluster down` read it
back; the drill builds the same thing in a temp directory (`--local`) or
loads the state of a running one, and restarts a process it killed from the
same record (same argv, so same ports and data).

Every node runs JetStream with `sync_interval: always`; a cluster's nodes are
routed to each other and each has a monitoring port.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagnats.domain.errors import DagnatsError

from ..engine.serve import default_data_dir
from ..engine.server import (
    CLUSTER_NAME,
    READY_LINE,
    MetaView,
    NatsServer,
    free_port,
    meta_counts,
    server_binary,
    settled_leader,
)
from .processes import ProcessError, Spawned

STATE_FILE = "state.json"
ENGINE_READY = "engine ready"
WORKER_READY = "started:"
# Default ports: clients 4222.., routes 6222.., monitoring 8222.. (--base-port moves all three).
ROUTE_OFFSET, HTTP_OFFSET = 2000, 4000
CLI = [sys.executable, "-m", "dagnats.infra.cli"]


class DeploymentError(DagnatsError, RuntimeError):
    """The deployment cannot be started, found or stopped as asked."""


def default_cluster_dir() -> Path:
    return default_data_dir() / "cluster"


@dataclass
class Deployment:
    """The processes of one local deployment, and where it keeps its files."""

    directory: Path
    nodes: list[Spawned] = field(default_factory=list)
    engines: list[Spawned] = field(default_factory=list)
    workers: list[Spawned] = field(default_factory=list)
    replicas: int = 1

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what --nats-url takes)."""
        return ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def processes(self) -> list[Spawned]:
        return [*self.nodes, *self.engines, *self.workers]

    # ---- state file ----------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def save(self) -> None:
        data = {
            "directory": str(self.directory),
            "url": self.url,
            "replicas": self.replicas,
            "processes": [p.to_json() for p in self.processes],
        }
        self.state_path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Deployment:
        path = Path(directory) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DeploymentError(f"no cluster state in {directory} (start one with `dagnats cluster up`)") from None
        except (OSError, ValueError) as err:
            raise DeploymentError(f"cannot read {path}: {err}") from None
        found = cls(Path(data["directory"]), replicas=data.get("replicas", 1))
        for item in data["processes"]:
            spawned = Spawned.from_json(item)
            {"nats": found.nodes, "engine": found.engines, "worker": found.workers}[spawned.role].append(spawned)
        return found

    # ---- starting ------------------------------------------------------------------

    def add_nodes(self, count: int, base_port: int = 0) -> None:
        """Configure `count` nodes n1..nN (routed when more than one); base_port 0 picks free ports."""
        if base_port:
            client = [base_port + i for i in range(count)]
        else:
            client = [free_port() for _ in range(count)]
        route = [p + ROUTE_OFFSET if base_port else free_port() for p in client]
        http = [p + HTTP_OFFSET if base_port else free_port() for p in client]
        routes = [f"nats-route://127.0.0.1:{port}" for port in route] if count > 1 else []
        for i in range(count):
            name = f"n{i + 1}"
            server = NatsServer(
                self.directory / name,
                port=client[i],
                server_name=name,
                cluster_name=CLUSTER_NAME if count > 1 else None,
                cluster_port=route[i] if count > 1 else None,
                routes=routes,
                http_port=http[i],
            )
            server.data_dir.mkdir(parents=True, exist_ok=True)
            server.config_path.write_text(server.config_text())
            argv = [server_binary(), "-c", str(server.config_path)]
            log = str(server.data_dir / "nats-server.log")
            self.nodes.append(Spawned("nats", name, argv, log, port=client[i], http_port=http[i]))
        self.replicas = 3 if count >= 3 else 1

    def add_engine(self, env: dict[str, str] | None = None) -> Spawned:
        name = f"engine{len(self.engines) + 1}"
        argv = [*CLI, "serve", "--external", "--nats-url", self.url, "--replicas", str(self.replicas)]
        engine = Spawned("engine", name, argv, str(self.directory / f"{name}.log"), env=dict(env or {}))
        self.engines.append(engine)
        return engine

    def add_worker(self, file: Path) -> Spawned:
        name = f"worker{len(self.workers) + 1}"
        argv = [*CLI, "worker", str(Path(file).resolve()), "--nats-url", self.url]
        worker = Spawned("worker", name, argv, str(self.directory / f"{name}.log"))
        self.workers.append(worker)
        return worker

    def start_nodes(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            start_node(node, timeout)
        wait_for_meta_leader(self.nodes, timeout)

    def start_all(self, timeout: float = 60.0) -> None:
        """Nodes (then a meta leader), engines, workers; each waited for in turn."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start_nodes(timeout)
        for engine in self.engines:
            start_ready(engine, ENGINE_READY, timeout)
        for worker in self.workers:
            start_ready(worker, WORKER_READY, timeout)

    def stop_all(self) -> list[str]:
        """Workers, engines, then nodes: SIGTERM, SIGKILL after a grace. Names that were gone."""
        gone = []
        for proc in [*self.workers, *self.engines, *reversed(self.nodes)]:
            if not proc.alive:
                gone.append(proc.name)
            proc.stop()
        return gone


def start_ready(proc: Spawned, ready_line: str, timeout: float) -> None:
    """Start `proc` and wait for its ready line in the part of the log it writes now."""
    since = proc.log_size()
    proc.start()
    proc.wait_ready(ready_line, timeout, since)


def start_node(node: Spawned, timeout: float = 30.0) -> None:
    if node.port and not _port_free(node.port):
        raise DeploymentError(f"port 127.0.0.1:{node.port} of {node.name} is already in use")
    start_ready(node, READY_LINE, timeout)


def _port_free(port: int) -> bool:
    import socket

    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


# ---- the monitoring endpoint --------------------------------------------------------


def monitor(node: Spawned, path: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET /varz, /jsz, ... of a node as JSON."""
    url = f"http://127.0.0.1:{node.http_port}/{path.lstrip('/')}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def meta_view(node: Spawned) -> dict[str, Any]:
    """What a node says of JetStream: its meta leader, and whether it is current."""
    jsz = _jsz(node)
    if jsz is None:
        return {"leader": None, "current": None}
    leader, _, _ = meta_counts(jsz, node.name)
    meta = jsz.get("meta_cluster") or {}
    return {"leader": leader, "current": not meta or _current(node, meta)}


def _jsz(node: Spawned) -> dict[str, Any] | None:
    try:
        return monitor(node, "jsz")
    except (OSError, ValueError):
        return None


def _current(node: Spawned, meta: dict[str, Any]) -> bool:
    # The leader is current by definition; a follower is current once caught up.
    if meta.get("leader") == node.name:
        return True
    return bool(meta.get("leader")) and not meta.get("pending", 0)


def wait_for_meta_leader(nodes: list[Spawned], timeout: float = 30.0) -> str:
    """Wait until every running node names the same meta leader and sees all peers, and
    the leader has every running node current (``server.settled_leader``)."""
    running = [n for n in nodes if n.alive]
    deadline = time.monotonic() + timeout
    while True:
        views = [_meta_counts(n) for n in running]
        leader = settled_leader([n.name for n in running], views, len(nodes))
        if leader:
            return leader
        if time.monotonic() > deadline:
            raise ProcessError("nats cluster", f"no JetStream meta leader within {timeout:g} s: {views}")
        time.sleep(0.1)


def _meta_counts(node: Spawned) -> MetaView:
    jsz = _jsz(node)
    return meta_counts(jsz, node.name) if jsz is not None else (None, 0, 0)


def stream_leader(nodes: list[Spawned], stream: str) -> str | None:
    """Name of the node leading `stream`, from /jsz?streams=true (None if unknown)."""
    for node in nodes:
        if not node.alive:
            continue
        try:
            jsz = monitor(node, "jsz?streams=true")
        except (OSError, ValueError):
            continue
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if leader:
                        return str(leader)
    return None
