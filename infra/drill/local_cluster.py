"""`dagnats cluster up|down|status`: a local NATS cluster and engines that outlive the command.

`up` refuses to start over a state file whose processes still run, starts the
nodes (then waits for a JetStream meta leader), the engines and optional
workers, and writes the state; a start that fails stops what it started.
`status` shows each recorded process and what the nodes' monitoring endpoints
say. `down` stops every recorded process that is still ours (SIGTERM, then
SIGKILL after a grace) and removes the state file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .deployment import Deployment, DeploymentError, meta_view, monitor


def up(
    directory: Path, nodes: int = 3, engines: int = 2, workers_file: Path | None = None, base_port: int = 4222
) -> Deployment:
    directory = Path(directory).resolve()
    _refuse_running(directory)
    if workers_file is not None and not Path(workers_file).is_file():
        raise DeploymentError(f"workers file {workers_file} not found")
    deployment = Deployment(directory)
    deployment.add_nodes(nodes, base_port)
    for _ in range(engines):
        deployment.add_engine()
    if workers_file is not None:
        deployment.add_worker(workers_file)
    try:
        deployment.start_all()
        deployment.save()
    except BaseException:
        deployment.stop_all()  # nothing of a failed start keeps running
        raise
    return deployment


def _refuse_running(directory: Path) -> None:
    try:
        found = Deployment.load(directory)
    except DeploymentError:
        return  # no state (or unreadable): nothing of ours runs there
    alive = [p.name for p in found.processes if p.alive]
    if alive:
        raise DeploymentError(
            f"a cluster is already running from {directory} ({', '.join(alive)}); "
            "stop it with `dagnats cluster down` first"
        )


def status(directory: Path) -> dict[str, Any]:
    deployment = Deployment.load(Path(directory).resolve())
    rows = []
    for proc in deployment.processes:
        row: dict[str, Any] = {
            "role": proc.role,
            "name": proc.name,
            "pid": proc.pid,
            "alive": proc.alive,
            "port": proc.port,
            "http_port": proc.http_port,
            "log": proc.log,
        }
        if proc.role == "nats":
            row.update(_node_view(proc) if row["alive"] else {"meta_leader": None, "current": None})
        rows.append(row)
    return {"directory": str(deployment.directory), "url": deployment.url, "processes": rows}


def _node_view(node: Any) -> dict[str, Any]:
    view = meta_view(node)
    try:
        varz = monitor(node, "varz")
    except (OSError, ValueError):
        varz = {}
    return {
        "meta_leader": view["leader"],
        "current": view["current"],
        "version": varz.get("version"),
        "connections": varz.get("connections"),
    }


def down(directory: Path) -> dict[str, Any]:
    deployment = Deployment.load(Path(directory).resolve())
    running = [p.name for p in deployment.processes if p.alive]
    gone = deployment.stop_all()
    deployment.state_path.unlink(missing_ok=True)
    return {"directory": str(deployment.directory), "stopped": running, "already_gone": gone}
