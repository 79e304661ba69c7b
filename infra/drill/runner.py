"""`dagnats drill`: load, faults on a seeded schedule, then the invariant check.

Theory of operation, in order:

    deployment   --local: nodes and engines of its own in a temp dir; else the
                 processes recorded by `dagnats cluster up` (state file)
    workers      the drill's own worker processes, journalling executions
    load+faults  runs started at a rate while the schedule kills -9 and
                 restarts engines, workers or a NATS node; a probe publishes
                 every 100 ms to time NATS unavailability
    settle       wait until every run is terminal or the deadline passes
    check        read every run's history as stored, the engine's status of
                 each run and the journal; `invariants.check` gives the figures

What the drill started it stops; a deployment it found keeps running (a
process it killed and restarted has its new PID written back to the state).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagnats.domain.errors import InvalidInput

from ..client import Client
from ..engine.drill_hooks import POISON_ENV
from ..engine.server import server_binary
from ..wire.names import HISTORY_STREAM
from . import faults as fault_schedule
from .deployment import ENGINE_READY, WORKER_READY, Deployment, start_ready, stream_leader, wait_for_meta_leader
from .invariants import FaultDone, Observed, Report, check
from .load import Load, Probe, connect, read_history, retrying, statuses_of, wait_terminal
from .processes import ProcessError, Spawned
from .workload import definition, read_journal, write_worker

log = logging.getLogger("dagnats.drill")
POISON_PREFIX = "poison-"


@dataclass
class DrillOptions:
    seed: int
    runs: int = 50
    rate: float = 10.0
    kinds: tuple[str, ...] = ("engine", "worker", "nats")
    faults_per_kind: int = 1
    poison: int = 0
    local: bool = False
    nodes: int = 1
    engines: int = 2
    workers: int = 2
    deadline: float = 120.0
    cluster_dir: Path | None = None
    keep: bool = False  # --local: keep the temp dir (logs) after the drill


@dataclass
class DrillResult:
    report: Report
    options: DrillOptions
    schedule: list[fault_schedule.Fault]
    fired: list[FaultDone]
    directory: Path
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.report.ok,
            "seed": self.options.seed,
            "figures": self.report.figures,
            "problems": self.report.problems,
            "faults": [f.__dict__ for f in self.fired],
            "directory": str(self.directory),
            "provenance": self.provenance,
        }


def run_drill(options: DrillOptions) -> DrillResult:
    if options.poison and not options.local:
        raise InvalidInput("poison runs need engines the drill starts itself: add --local")
    if options.local:
        directory = Path(tempfile.mkdtemp(prefix="dagnats-drill-"))
        deployment = Deployment(directory)
        deployment.add_nodes(options.nodes)
        env = {POISON_ENV: POISON_PREFIX} if options.poison else {}
        for _ in range(options.engines):
            deployment.add_engine(env)
    else:
        from .deployment import default_cluster_dir

        deployment = Deployment.load(options.cluster_dir or default_cluster_dir())
        directory = deployment.directory / f"drill-{options.seed}-{int(time.time())}"
    workers: list[Spawned] = []
    try:
        if options.local:
            deployment.start_all()
        worker_file, journal = write_worker(directory / "worker")
        for i in range(options.workers):
            worker = Spawned("worker", f"drill-worker{i + 1}", [], str(directory / f"drill-worker{i + 1}.log"))
            worker.argv = [*_cli(), "worker", str(worker_file), "--nats-url", deployment.url]
            workers.append(worker)
            start_ready(worker, WORKER_READY, 60)
        fired, report_input = asyncio.run(_drive(options, deployment, workers))
        report_input.journal = read_journal(journal)
        report = check(report_input)
        schedule = _schedule(options, deployment, workers)
        return DrillResult(report, options, schedule, fired, directory, _provenance(options, deployment))
    finally:
        for worker in workers:
            worker.stop(5.0)
        if options.local:
            deployment.stop_all()
            if not options.keep:
                shutil.rmtree(directory, ignore_errors=True)
        elif deployment.state_path.exists():
            deployment.save()  # restarted processes have new PIDs


def _schedule(options: DrillOptions, deployment: Deployment, workers: list[Spawned]) -> list[fault_schedule.Fault]:
    span = max(options.runs / options.rate, 4.0)
    kinds = tuple(k for k in options.kinds if k != "engine" or deployment.engines)
    return fault_schedule.schedule(
        options.seed, kinds, span, len(deployment.engines), len(workers), options.faults_per_kind
    )


async def _drive(
    options: DrillOptions, deployment: Deployment, workers: list[Spawned]
) -> tuple[list[FaultDone], Observed]:
    nc = await connect(deployment.url)
    client = Client(deployment.url, timeout=10.0)
    client.nc = nc
    try:
        await retrying(lambda: client.register(definition()), "registering the drill workflow")
        probe = Probe(nc, deployment.replicas)
        await probe.setup()
        probe_task = asyncio.create_task(probe.run())
        load = Load(client, f"{options.seed}-{int(time.time()) % 100000}", options.runs, options.rate, options.poison)
        schedule = _schedule(options, deployment, workers)
        fired: list[FaultDone] = []
        load_task = asyncio.create_task(load.run())
        await _inject(schedule, deployment, workers, fired)
        await load_task
        deadline = time.monotonic() + options.deadline
        await wait_terminal(client, load.started, load.poisoned, deadline)
        await load.settle()
        probe.stop()
        await probe_task
        await probe.remove()
        statuses = await statuses_of(client, load.started)
        histories = {r: await retrying(lambda r=r: read_history(nc, r), "reading a history") for r in load.started}
        seen = Observed(load.started, load.poisoned, histories, statuses, [], fired, probe.failures)
        return fired, seen
    finally:
        await nc.close()


async def _inject(
    schedule: list[fault_schedule.Fault], deployment: Deployment, workers: list[Spawned], fired: list[FaultDone]
) -> None:
    began = time.time()
    for fault in schedule:
        await asyncio.sleep(max(0.0, began + fault.at - time.time()))
        fired.append(await asyncio.to_thread(_fire, fault, deployment, workers))


def _fire(fault: fault_schedule.Fault, deployment: Deployment, workers: list[Spawned]) -> FaultDone:
    """kill -9 the target, wait `down_for`, start it again (same argv: same ports and data)."""
    if fault.kind == "nats":
        leader = stream_leader(deployment.nodes, HISTORY_STREAM) if len(deployment.nodes) > 1 else None
        target = next((n for n in deployment.nodes if n.name == leader), deployment.nodes[0])
        ready = "Server is ready"
    elif fault.kind == "engine":
        target, ready = deployment.engines[fault.target % len(deployment.engines)], ENGINE_READY
    else:
        target, ready = workers[fault.target % len(workers)], WORKER_READY
    log.info("drill: kill -9 %s (pid %d)", target.name, target.pid)
    killed_at = time.time()
    target.kill()
    time.sleep(fault.down_for)
    tries = _restart(target, ready)
    restarted_at = time.time()
    if fault.kind == "nats" and len(deployment.nodes) > 1:
        wait_for_meta_leader(deployment.nodes, 60)
    return FaultDone(fault.kind, target.name, round(killed_at, 3), round(restarted_at, 3), tries, fault.at)


def _restart(target: Spawned, ready: str, within: float = 90.0) -> int:
    """Start the process again until it is ready, as a supervisor would (systemd's
    Restart=on-failure): an engine started while NATS elects a leader may exit."""
    deadline = time.monotonic() + within
    tries = 0
    while True:
        tries += 1
        try:
            start_ready(target, ready, 60)
            return tries
        except ProcessError:
            if time.monotonic() > deadline:
                raise
            log.warning("drill: %s exited before it was ready; starting it again", target.name)
            time.sleep(1.0)


def _cli() -> list[str]:
    from .deployment import CLI

    return list(CLI)


def _provenance(options: DrillOptions, deployment: Deployment) -> dict[str, Any]:
    import nats as nats_py

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    root = Path(__file__).resolve().parents[2]
    return {
        "nats_server": out([server_binary(), "--version"]),
        "nats_py": getattr(nats_py, "__version__", ""),
        "commit": out(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "sync_always": True,
        "nodes": len(deployment.nodes),
        "engines": len(deployment.engines),
        "replicas": deployment.replicas,
    }
