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

`run_once_direct` is a diagnostic: it publishes the ``workflow.started`` fact
to the run's inbox itself, exactly as the control plane's ``run.start``
does, so the engine's run processing is measured without the control plane.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from nats.js import api

from dagnats.domain.events import WORKFLOW_COMPLETED, WORKFLOW_STARTED, decode_record, format_timestamp, make_event
from dagnats.infra.client import Client
from dagnats.infra.tracing import new_trace_parent
from dagnats.infra.wire.facts import publish_fact
from dagnats.infra.wire.names import HISTORY_STREAM, INBOX_STREAM, RUNS_BUCKET, TASK_STREAM

from .load import closed_loop
from .procs import PYTHON, REPO, Child, CpuMeter, MessageMeter, Processes, proc_status, rss_mb

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
        self.traced: list[tuple[str, float, float]] | None = None  # (run id, wall start, wall observed)
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
            "history.>",
            stream=HISTORY_STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=self._on_record,
        )
        await self.client.register(CHAIN3)
        self.stored_def = await self.client.workflow(CHAIN3["name"])
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
        future = self.waiting.get(msg.subject[len("history.") :])
        if future is None or future.done():
            return
        for event in decode_record(msg.data):
            if event.type.startswith("workflow.") and event.type != "workflow.started":
                future.set_result((arrived, event.type))
                return

    async def run_once(self, timeout: float = 60.0) -> float:
        """Start one chain3 run with the client; its latency until its terminal record, in s."""
        return await self._timed_run(lambda run_id, n: self.client.start("chain3", {"n": n}, run_id=run_id), timeout)

    async def run_workflow(self, workflow: str, input: Any = None, timeout: float = 60.0) -> float:
        """The same for any registered workflow, with this input (``None``: ``{"n": serial}``)."""

        async def start(run_id: str, n: int) -> None:
            await self.client.start(workflow, {"n": n} if input is None else input, run_id=run_id)

        return await self._timed_run(start, timeout)

    async def run_as_a_user(self, timeout: float = 60.0) -> float:
        """As a user does: ``Client.start`` (the engine makes the run id) then ``Client.wait``;
        the latency until the wait returns, in s."""
        self._serial += 1
        began = time.perf_counter()
        run_id = await self.client.start(CHAIN3["name"], {"n": self._serial})
        view = await self.client.wait(run_id, timeout=timeout)
        if view["status"] != "completed":
            raise RunFailed(run_id, view["status"])
        return time.perf_counter() - began

    def new_run_id(self) -> str:
        """A run id of this bench's own; ``expect`` it before starting the run."""
        self._serial += 1
        return f"b{self._batch}-{self._serial:06d}"

    def expect(self, run_id: str) -> asyncio.Future:
        """A future for (perf_counter when the run's terminal record arrived, its type);
        ``forget`` it once awaited."""
        done = asyncio.get_running_loop().create_future()
        self.waiting[run_id] = done
        return done

    def forget(self, run_id: str) -> None:
        self.waiting.pop(run_id, None)

    async def run_once_direct(self, timeout: float = 60.0) -> float:
        """The same, but the start fact goes straight to the inbox (no control plane)."""
        return await self._timed_run(self._publish_start, timeout)

    async def _publish_start(self, run_id: str, n: int) -> None:
        trace_parent = new_trace_parent()
        event = make_event(
            WORKFLOW_STARTED,
            run_id,
            timestamp=format_timestamp(datetime.now(UTC)),
            payload={"workflow_def": self.stored_def, "input": {"n": n}},
            trace_parent=trace_parent,
            id="workflow.started",
        )
        await publish_fact(self.client.nc.jetstream(), event)

    async def _timed_run(self, start, timeout: float) -> float:
        run_id = self.new_run_id()
        done = self.expect(run_id)
        wall, began = time.time(), time.perf_counter()
        try:
            await start(run_id, self._serial)
            arrived, status = await asyncio.wait_for(done, timeout)
        finally:
            self.forget(run_id)
        if status != WORKFLOW_COMPLETED:
            raise RunFailed(run_id, status)
        if self.traced is not None:
            self.traced.append((run_id, wall, wall + arrived - began))
        return arrived - began

    async def hops(self) -> list[dict]:
        """Median, p90 and max of each gap between consecutive history events of the traced runs.

        Events carry the wall time their writer stamped them with (the API for
        workflow.started, the worker for step.started/completed, the engine for
        its decisions); the first gap starts at the client's request and the
        last ends when the bench saw the terminal record. Read after the
        measurement, so the reads cost the measured runs nothing.
        """
        gaps: dict[str, list[float]] = {}
        for run_id, wall_start, wall_observed in self.traced or []:
            previous, label = wall_start, "start request sent"
            for event in await self.client.events(run_id):
                name = f"{event['type']} {event.get('step_id') or ''}".strip()
                stamp = datetime.fromisoformat(event["timestamp"]).timestamp()
                gaps.setdefault(f"{label} -> {name}", []).append(stamp - previous)
                previous, label = stamp, name
            gaps.setdefault(f"{label} -> terminal record seen", []).append(wall_observed - previous)
        return [
            {
                "hop": hop,
                "count": len(values),
                "p50_ms": round(statistics.median(values) * 1000, 2),
                "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))] * 1000, 2),
                "max_ms": round(max(values) * 1000, 2),
            }
            for hop, values in gaps.items()
        ]

    def check_alive(self) -> None:
        self.engine.check_alive()
        self.worker.check_alive()

    async def memory(self, settle: float) -> dict:
        """The engine's RSS (and threads, live runs) after `settle` seconds of quiet."""
        await asyncio.sleep(settle)
        status = proc_status(self.engine.pid)
        live = (await self.client.engine_status())["engine"]
        return {
            "rss_mb": round(status["VmRSS"] / 1024, 1),
            "hwm_mb": round(status["VmHWM"] / 1024, 1),
            "threads": status["Threads"],
            "live_runs": live["live_runs"],
            "worker_rss_mb": rss_mb(self.worker.pid),
        }

    async def writes_per_run(self) -> dict:
        """Messages ever stored per stream (its last sequence) per run started, all batches."""
        js = self.client.nc.jetstream()
        streams = {
            "history appends": HISTORY_STREAM,
            "inbox facts": INBOX_STREAM,
            "task publishes": TASK_STREAM,
            "snapshot puts": f"KV_{RUNS_BUCKET}",
        }
        counts = {label: (await js.stream_info(name)).state.last_seq for label, name in streams.items()}
        counts["total"] = sum(counts.values())
        return {
            "runs_started": self._serial,
            **{label: round(n / max(1, self._serial), 2) for label, n in counts.items()},
        }

    def message_meter(self) -> MessageMeter:
        """The server's per-connection counters: the bench's client, the worker (its
        connection is named ``worker-…``) and the engine (every other connection)."""
        return MessageMeter(self.server.http_port, {self.client.nc.client_id: "client (bench)"}, {"worker-": "worker"})

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(
            {
                "nats-server": self.server.pid,
                "engine": self.engine.pid,
                "worker": self.worker.pid,
                "client (bench)": os.getpid(),
            }
        )


async def engine_bench(
    procs: Processes,
    server,
    *,
    runs: int,
    sequential_runs: int,
    concurrency: int,
    second_batch_concurrency: int | None,
    warmup: int,
    max_seconds: float,
    direct_batch: bool = True,
    profiler=None,
) -> dict:
    """Warm-up, batch 1, memory, unloaded runs, batch 2, memory, and the direct-start batch."""
    async with EngineUnderTest(procs, server) as eng:
        result: dict = {"memory": {"idle_after_start": await eng.memory(settle=1.0)}}
        await closed_loop(eng.run_once, warmup, min(warmup, 10), max_seconds)
        eng.check_alive()
        if profiler is not None:
            profiler.start(eng.engine.pid)
        result["loaded"] = await _batch(eng, eng.run_once, runs, concurrency, max_seconds)
        if profiler is not None:
            result["profile"] = profiler.stop()
        result["memory"]["after_batch_1"] = await eng.memory(settle=2.0)
        eng.traced = []
        result["unloaded"] = await closed_loop(eng.run_once, sequential_runs, 1, max_seconds)
        traced, eng.traced = eng.traced, None
        eng.check_alive()
        if second_batch_concurrency:
            result["loaded_second_batch"] = await _batch(eng, eng.run_once, runs, second_batch_concurrency, max_seconds)
            result["memory"]["after_batch_2"] = await eng.memory(settle=2.0)
        result["loaded_api"] = await _batch(eng, eng.run_as_a_user, runs, concurrency, max_seconds)
        result["unloaded_api"] = await closed_loop(eng.run_as_a_user, sequential_runs, 1, max_seconds)
        if direct_batch:
            result["loaded_direct_start"] = await _batch(eng, eng.run_once_direct, runs, concurrency, max_seconds)
            result["unloaded_direct_start"] = await closed_loop(eng.run_once_direct, sequential_runs, 1, max_seconds)
        result["writes_per_run"] = await eng.writes_per_run()
        eng.traced = traced
        result["unloaded_hops"] = await eng.hops()
        eng.check_alive()
    return result


async def _batch(eng: EngineUnderTest, one, runs: int, concurrency: int, max_seconds: float) -> dict:
    """One loaded batch with the CPU use of every process while it ran."""
    meter, messages = eng.cpu_meter(), eng.message_meter()
    loaded = await closed_loop(one, runs, concurrency, max_seconds)
    loaded["cpu_percent"] = meter.read()
    loaded["messages_per_run"] = {
        ("engine" if kind == "rest" else kind): counts for kind, counts in messages.per_run(runs).items()
    }
    loaded["steps_per_s"] = round(loaded["runs_per_s"] * STEPS_PER_RUN, 1) if loaded["runs_per_s"] else None
    eng.check_alive()
    return loaded
