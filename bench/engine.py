"""The engine under load: `dagnats serve --external` + one worker process.

Theory of operation. The engine and the worker (bench/noop_worker.py: three
no-op async handlers, max_concurrent=100) run as processes of their own
against a server the benchmark started. The benchmark registers the 3-step
chain and starts runs with the async `Client`; each run's id is chosen here,
so its completion can be awaited before the start request is even sent.

Completion is observed by ONE ordered push consumer on ``history.>`` in this
process: the server pushes each history record once, the callback looks for
``"type":"workflow.`` in its bytes and decodes only those records. This puts
no load on the engine (polling ``run.get`` would cost the engine a request per
poll, and a KV + history read for every passivated run). A run's latency is
from just before its start request to the arrival of its terminal record.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from nats.js import api

from dagnats.domain.events import WORKFLOW_COMPLETED, decode_record
from dagnats.infra.client import Client
from dagnats.infra.resources import HISTORY_STREAM, INBOX_STREAM, RUNS_BUCKET, TASK_STREAM

from .load import closed_loop
from .procs import PYTHON, REPO, Child, CpuMeter, Processes, proc_status, rss_mb

CHAIN3 = {
    "name": "chain3",
    "steps": [
        {"id": "a", "task": "noop_a"},
        {"id": "b", "task": "noop_b", "depends_on": ["a"]},
        {"id": "c", "task": "noop_c", "depends_on": ["b"]},
    ],
}
STEPS_PER_RUN = len(CHAIN3["steps"])
_TERMINAL_MARK = b'"type":"workflow.'


class RunFailed(RuntimeError):
    def __init__(self, run_id: str, status: str) -> None:
        self.run_id, self.status = run_id, status
        super().__init__(f"run {run_id} ended {status}")


class EngineUnderTest:
    """Engine + worker processes, a client, and the completion observer."""

    def __init__(self, procs: Processes, server, worker_concurrency: int = 100) -> None:
        self.procs, self.server = procs, server
        self.worker_concurrency = worker_concurrency
        self.waiting: dict[str, asyncio.Future] = {}
        self._serial = 0
        self._batch = secrets.token_hex(3)

    async def __aenter__(self) -> EngineUnderTest:
        url = self.server.url
        self.engine: Child = self.procs.child(
            "engine", [PYTHON, "-m", "dagnats.infra.cli", "serve", "--external", "--nats-url", url]
        )
        await asyncio.to_thread(self.engine.wait_for, "engine ready", 60)
        self.worker: Child = self.procs.child(
            "worker",
            [PYTHON, "-m", "dagnats.infra.cli", "worker", str(REPO / "bench" / "noop_worker.py"), "--nats-url", url],
            env={"BENCH_WORKER_CONCURRENCY": str(self.worker_concurrency)},
        )
        await asyncio.to_thread(self.worker.wait_for, " started: ", 60)
        self.client = await Client(url, timeout=10).connect()
        js = self.client.nc.jetstream()
        self._observer = await js.subscribe(
            "history.>", stream=HISTORY_STREAM, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW, cb=self._on_record,
        )
        await self.client.register(CHAIN3)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._observer.unsubscribe()
            await self.client.close()
        finally:
            self.procs.stop(self.worker)
            self.procs.stop(self.engine)

    async def _on_record(self, msg) -> None:
        if _TERMINAL_MARK not in msg.data:
            return
        arrived = time.perf_counter()
        future = self.waiting.get(msg.subject[len("history."):])
        if future is None or future.done():
            return
        for event in decode_record(msg.data):
            if event.type.startswith("workflow.") and event.type != "workflow.started":
                future.set_result((arrived, event.type))
                return

    async def run_once(self, timeout: float = 60.0) -> float:
        """Start one chain3 run and wait for its terminal record; its latency in seconds."""
        self._serial += 1
        run_id = f"b{self._batch}-{self._serial:06d}"
        done = asyncio.get_running_loop().create_future()
        self.waiting[run_id] = done
        began = time.perf_counter()
        try:
            await self.client.start("chain3", {"n": self._serial}, run_id=run_id)
            arrived, status = await asyncio.wait_for(done, timeout)
        finally:
            del self.waiting[run_id]
        if status != WORKFLOW_COMPLETED:
            raise RunFailed(run_id, status)
        return arrived - began

    def check_alive(self) -> None:
        self.engine.check_alive()
        self.worker.check_alive()

    async def memory(self, settle: float) -> dict:
        """The engine's RSS (and threads, live runs) after `settle` seconds of quiet."""
        await asyncio.sleep(settle)
        status = proc_status(self.engine.pid)
        live = (await self.client.engine_status())["engine"]
        return {
            "rss_mb": round(status["VmRSS"] / 1024, 1), "hwm_mb": round(status["VmHWM"] / 1024, 1),
            "threads": status["Threads"], "live_runs": live["live_runs"],
            "worker_rss_mb": rss_mb(self.worker.pid),
        }

    async def writes_per_run(self) -> dict:
        """Messages ever stored per stream (its last sequence) per run started, all batches."""
        js = self.client.nc.jetstream()
        streams = {"history appends": HISTORY_STREAM, "inbox facts": INBOX_STREAM,
                   "task publishes": TASK_STREAM, "snapshot puts": f"KV_{RUNS_BUCKET}"}
        counts = {label: (await js.stream_info(name)).state.last_seq for label, name in streams.items()}
        counts["total"] = sum(counts.values())
        return {"runs_started": self._serial,
                **{label: round(n / max(1, self._serial), 2) for label, n in counts.items()}}

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter({"nats-server": self.server.pid, "engine": self.engine.pid,
                         "worker": self.worker.pid, "client (bench)": os.getpid()})


async def engine_bench(procs: Processes, server, *, runs: int, sequential_runs: int, concurrency: int,
                       second_batch_concurrency: int | None, warmup: int, max_seconds: float,
                       profiler=None) -> dict:
    """Warm-up, a loaded batch, memory, unloaded runs, optionally a second batch and memory."""
    async with EngineUnderTest(procs, server) as eng:
        result: dict = {"memory": {"idle_after_start": await eng.memory(settle=1.0)}}
        await closed_loop(eng.run_once, warmup, min(warmup, 10), max_seconds)
        eng.check_alive()
        if profiler is not None:
            profiler.start(eng.engine.pid)
        meter = eng.cpu_meter()
        loaded = await closed_loop(eng.run_once, runs, concurrency, max_seconds)
        loaded["cpu_percent"] = meter.read()
        if profiler is not None:
            result["profile"] = profiler.stop()
        loaded["steps_per_s"] = round(loaded["runs_per_s"] * STEPS_PER_RUN, 1) if loaded["runs_per_s"] else None
        result["loaded"] = loaded
        eng.check_alive()
        result["memory"]["after_batch_1"] = await eng.memory(settle=2.0)
        result["unloaded"] = await closed_loop(eng.run_once, sequential_runs, 1, max_seconds)
        if second_batch_concurrency:
            meter = eng.cpu_meter()
            second = await closed_loop(eng.run_once, runs, second_batch_concurrency, max_seconds)
            second["cpu_percent"] = meter.read()
            second["steps_per_s"] = round(second["runs_per_s"] * STEPS_PER_RUN, 1) if second["runs_per_s"] else None
            result["loaded_second_batch"] = second
            eng.check_alive()
            result["memory"]["after_batch_2"] = await eng.memory(settle=2.0)
        result["writes_per_run"] = await eng.writes_per_run()
        eng.check_alive()
    return result
