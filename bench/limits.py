"""Benchmark: what flow control costs when it does not bind, how fair it is when it does, and 10,000 keys.

    python bench/limits.py [--quick] [--only PHASE] [--profile WHERE] [--out FILE] [--keep]

Phases, one after the other (the machine has 2 cores; nothing overlaps), each
on a fresh nats-server (``sync_interval: always``, its own data directory)
with its own ``dagnats serve --external`` and one worker process
(bench/noop_worker.py: no-op async handlers, max_concurrent=100):

1. overhead: the 3-step chain of run.py in three variants: no limit (A),
   ``max_task_concurrency`` 1000 on every step (B: the largest the engine
   accepts; 100 runs in flight never fill it), ``rate_limit`` 10,000 per 1 s
   on every step (C: a few hundred steps/s of a task never reach it).
   Rounds A, B, C, A, B, C, ... of a loaded batch (100 runs in flight) each,
   then of an unloaded batch (one run at a time) each; same engine, same
   server. The ratio is B (and C) over A, pooled over the rounds.
2. fairness: a one-step workflow with ``keyed_rate_limit`` 20 per 1 s on
   ``key``; 10 keys x 100 runs, started interleaved (k0, k1, ..., k9, k0, ...;
   at most 100 start requests in flight), then the same in key blocks (all of
   k0, then all of k1, ...) with fresh keys. Per key: first, median and last
   completion, from the first start request; afterwards the runs' histories
   give each admission's time and how often each run was told to wait.
3. scale: 10,000 runs of a one-step workflow whose ``keyed_rate_limit`` key is
   the run's serial number (10,000 keys, one run each, never binding), 100 in
   flight; the engine's VmRSS and Threads sampled from /proc every 0.5 s;
   then the ``limits`` listing over 10,000 keys is timed; then the same count
   of runs without a limit, sampled the same way, for comparison.

Completion is seen by run.py's observer (one ordered push consumer on
``history.>`` in this process). Prints a table and writes
bench/results/<timestamp>-limits.json (+ .txt), and --out. Every process it
starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import msgspec
from nats.js import api

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import limits_report  # noqa: E402
from bench.engine import CHAIN3, STEPS_PER_RUN, EngineUnderTest  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.procs import REPO, Processes, proc_status  # noqa: E402
from bench.profile import Profiler, py_spy_binary  # noqa: E402
from bench.session import run_session, session_options  # noqa: E402
from bench.stats import rate  # noqa: E402
from dagnats.domain.events import WORKFLOW_COMPLETED  # noqa: E402
from dagnats.domain.limits import RateWindow  # noqa: E402
from dagnats.infra.wire.names import FLOW_BUCKET, HISTORY_STREAM  # noqa: E402

RESULTS = REPO / "bench" / "results"
PHASES = ("overhead", "fairness", "scale")
PROFILE_AT = ("slots", "rate", "fair", "scale")
PHASE_SECONDS = 300.0  # no phase may take longer than this
LOAD_SECONDS = 120.0  # no new run starts after this long in one batch
RUN_TIMEOUT = 60.0  # a run that has not ended this long after its start request counts as failed

FULL = dict(rounds=3, loaded_runs=1000, unloaded_runs=100, warmup=20, keys=10, per_key=100, scale_runs=10_000)
QUICK = dict(rounds=2, loaded_runs=300, unloaded_runs=40, warmup=20, keys=10, per_key=100, scale_runs=2000)
IN_FLIGHT = 100

# The variants of phase 1: a name, the workflow it runs, what every step of it gets.
VARIANTS = {
    "none": ("chain3", {}),
    "max_task_concurrency": ("chain3-slots", {"max_task_concurrency": 1000}),
    "rate_limit": ("chain3-rate", {"rate_limit": {"limit": 10_000, "period": "1s"}}),
}
FAIR_RULE = {"key": "key", "limit": 20, "period": "1s"}
SCALE_RULE = {"key": "n", "limit": 20, "period": "1s"}
_WINDOW = msgspec.json.Decoder(RateWindow)


def chain3(name: str, extra: dict) -> dict:
    return {"name": name, "steps": [{**step, **extra} for step in CHAIN3["steps"]]}


def one_step(name: str, task: str, extra: dict) -> dict:
    return {"name": name, "steps": [{"id": "call", "task": task, **extra}]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: flow control (rate limits, concurrency limits)")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run (~2 min)")
    parser.add_argument("--only", choices=PHASES, action="append", help="run only these phases (repeatable)")
    parser.add_argument(
        "--profile",
        choices=PROFILE_AT,
        help="sample the engine with py-spy during the first loaded batch of variant B (slots) or C (rate), "
        "the interleaved fairness batch (fair) or the keyed scale run (scale); slows the engine",
    )
    session_options(parser)
    args = parser.parse_args(argv)
    if args.profile and py_spy_binary() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return args


# ---- measuring -------------------------------------------------------------------------------------


async def stream_seqs(eng: EngineUnderTest) -> dict[str, int]:
    """Messages ever stored in the history stream and the flow_control bucket."""
    js = eng.client.nc.jetstream()
    streams = {"history": HISTORY_STREAM, "flow_kv": f"KV_{FLOW_BUCKET}"}
    return {label: (await js.stream_info(name)).state.last_seq for label, name in streams.items()}


def engine_status(eng: EngineUnderTest) -> dict:
    status = proc_status(eng.engine.pid)
    return {"rss_mb": round(status["VmRSS"] / 1024, 1), "hwm_mb": round(status["VmHWM"] / 1024, 1), **status}


class Sampler:
    """The engine's VmRSS and Threads every `every` seconds, while a load runs."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, int]] = []  # (s since start, RSS MB, threads)
        self._began = time.perf_counter()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            status = proc_status(self.pid)
            elapsed = round(time.perf_counter() - self._began, 2)
            self.samples.append((elapsed, round(status["VmRSS"] / 1024, 1), status["Threads"]))
            await asyncio.sleep(self.every)

    async def stop(self) -> dict:
        self._task.cancel()
        samples = self.samples
        peak_rss = max(samples, key=lambda s: s[1])
        peak_threads = max(samples, key=lambda s: s[2])
        return {
            "count": len(samples),
            "every_s": self.every,
            "first": {"rss_mb": samples[0][1], "threads": samples[0][2]},
            "peak_rss": {"rss_mb": peak_rss[1], "at_s": peak_rss[0]},
            "peak_threads": {"threads": peak_threads[2], "at_s": peak_threads[0]},
            "last": {"rss_mb": samples[-1][1], "threads": samples[-1][2]},
            "series": samples,
        }


async def batch(eng: EngineUnderTest, variant: str, runs: int, in_flight: int, input: dict | None = None) -> dict:
    """One closed-loop batch of a variant (or workflow), with CPU use and stored writes per run;
    each run's input is `input`, else ``{"n": <the bench's serial number>}``."""
    workflow = VARIANTS[variant][0] if variant in VARIANTS else variant
    before = await stream_seqs(eng)
    meter = eng.cpu_meter()

    def one():
        return eng.run_workflow(workflow, input, timeout=RUN_TIMEOUT)

    result = await closed_loop(one, runs, in_flight, LOAD_SECONDS)
    result["cpu_percent"] = meter.read()
    await asyncio.sleep(0.5)  # releases are told after the run's record: let them land in this batch
    after = await stream_seqs(eng)
    done = max(1, result["runs"] + result["failed"])
    result["writes_per_run"] = {k: round((after[k] - before[k]) / done, 2) for k in after}
    eng.check_alive()
    return result


# ---- 1. overhead -----------------------------------------------------------------------------------


async def overhead(procs: Processes, size: dict, profile_at: str | None, stamp: str) -> dict:
    server = procs.server("overhead", sync_always=True)
    try:
        async with EngineUnderTest(procs, server) as eng:
            for name, extra in VARIANTS.values():
                if extra:
                    await eng.client.register(chain3(name, extra))
            idle = engine_status(eng)
            for variant in VARIANTS:
                await batch(eng, variant, size["warmup"], 10)
            rounds: list[dict] = []
            for number in range(size["rounds"]):
                this: dict = {"loaded": {}, "unloaded": {}}
                for variant in VARIANTS:
                    log(f"overhead round {number + 1}: {variant}, {IN_FLIGHT} in flight")
                    profiler = None
                    if number == 0 and profile_at and VARIANTS[variant][0].endswith(profile_at):
                        profiler = Profiler(RESULTS / f"profile-limits-{profile_at}-{stamp}")
                        profiler.start(eng.engine.pid)
                    this["loaded"][variant] = await batch(eng, variant, size["loaded_runs"], IN_FLIGHT)
                    if profiler is not None:
                        this["loaded"][variant]["profile"] = profiler.stop()
                for variant in VARIANTS:
                    log(f"overhead round {number + 1}: {variant}, one at a time")
                    this["unloaded"][variant] = await batch(eng, variant, size["unloaded_runs"], 1)
                rounds.append(this)
            windows = await flow_values(eng)
            return {"idle": idle, "after": engine_status(eng), "rounds": rounds, "flow_kv": windows}
    finally:
        procs.stop(server)


async def flow_values(eng: EngineUnderTest) -> dict:
    """The size in bytes of each flow_control entry, as the phase left it."""
    kv = await eng.client.nc.jetstream().key_value(FLOW_BUCKET)
    sizes = {}
    for key in await kv.keys():
        sizes[key] = len((await kv.get(key)).value or b"")
    return sizes


def pooled(rounds: list[dict], kind: str, variant: str) -> dict:
    """Runs/s over all rounds (runs / summed wall time) and latency over all runs."""
    batches = [r[kind][variant] for r in rounds]
    runs = sum(b["runs"] for b in batches)
    elapsed = sum(b["elapsed_s"] for b in batches)
    return {
        "runs": runs,
        "failed": sum(b["failed"] for b in batches),
        "runs_per_s": rate(runs, elapsed),
        "per_round_runs_per_s": [b["runs_per_s"] for b in batches],
        "p50_ms_per_round": [b["p50_ms"] for b in batches],
        "p90_ms_per_round": [b["p90_ms"] for b in batches],
        # nearest-rank percentiles are not poolable exactly: the median of the rounds' values
        "p50_ms": statistics.median(b["p50_ms"] for b in batches if b["p50_ms"] is not None),
        "p90_ms": statistics.median(b["p90_ms"] for b in batches if b["p90_ms"] is not None),
        "writes_per_run": batches[-1]["writes_per_run"],
        "cpu_percent": batches[-1]["cpu_percent"],
    }


# ---- 2. fairness -----------------------------------------------------------------------------------


async def fairness(procs: Processes, size: dict, profile_at: str | None, stamp: str) -> dict:
    server = procs.server("fairness", sync_always=True)
    try:
        async with EngineUnderTest(procs, server) as eng:
            await eng.client.register(one_step("fair", "noop_a", {"keyed_rate_limit": FAIR_RULE}))
            await batch(eng, "fair", size["warmup"], 10, {"key": "warm-up"})
            result = {"rule": FAIR_RULE, "keys": size["keys"], "per_key": size["per_key"]}
            for order in ("interleaved", "blocks"):
                log(f"fairness: {size['keys']} keys x {size['per_key']} runs, started {order}")
                profiler = None
                if order == "interleaved" and profile_at == "fair":
                    profiler = Profiler(RESULTS / f"profile-limits-fair-{stamp}")
                result[order] = await fair_batch(eng, order, size["keys"], size["per_key"], profiler)
            result["after"] = engine_status(eng)
            return result
    finally:
        procs.stop(server)


class WindowWatch:
    """Every admission a rate window records, as flow control's actor wrote it: the entries
    (when in ms, holder) of each version of the keys' KV entries, pushed by the server."""

    def __init__(self) -> None:
        self.entries: dict[str, set[tuple[int, str]]] = {}

    async def start(self, eng: EngineUnderTest, task: str) -> WindowWatch:
        js = eng.client.nc.jetstream()
        self._sub = await js.subscribe(
            f"$KV.{FLOW_BUCKET}.rate.{task}.>",
            stream=f"KV_{FLOW_BUCKET}",
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=self._on_version,
        )
        return self

    async def _on_version(self, msg) -> None:
        if msg.data:
            window = _WINDOW.decode(msg.data)
            key = msg.subject.rsplit(".", 1)[1]
            self.entries.setdefault(key, set()).update((when, holder) for when, holder, _ in window.entries)

    async def stop(self, period: float) -> dict:
        """The most holders of one key admitted in any period, by the actor's clock, each at
        its last admission (a holder granted again has its entry moved to the later time:
        ``entries_moved`` counts those, which only a second request for a held token makes)."""
        await self._sub.unsubscribe()
        most, moved = {}, 0
        for key, entries in self.entries.items():
            last: dict[str, int] = {}
            for when, holder in entries:
                last[holder] = max(when, last.get(holder, 0))
            moved += len(entries) - len(last)
            most[key] = most_in_window(sorted(w / 1000 for w in last.values()), period)
        return {"most_admitted_in_one_period": max(most.values()) if most else None, "entries_moved": moved}


async def fair_batch(eng: EngineUnderTest, order: str, keys: int, per_key: int, profiler: Profiler | None) -> dict:
    """Start every run (at most IN_FLIGHT start requests at once) in `order`; time each end."""
    names = [f"{order[0]}{k}" for k in range(keys)]
    if order == "interleaved":
        sequence = [names[i % keys] for i in range(keys * per_key)]
    else:
        sequence = [name for name in names for _ in range(per_key)]
    gate = asyncio.Semaphore(IN_FLIGHT)
    before = await stream_seqs(eng)
    windows = await WindowWatch().start(eng, "noop_a")
    began = time.perf_counter()
    sampler = Sampler(eng.engine.pid)
    if profiler is not None:
        profiler.start(eng.engine.pid)
    starts_acked: list[float] = []

    async def one(key: str) -> tuple[str, str, float | None, str]:
        run_id = eng.new_run_id()
        done = eng.expect(run_id)
        try:
            async with gate:
                await eng.client.start("fair", {"key": key}, run_id=run_id)
                starts_acked.append(time.perf_counter() - began)
            arrived, status = await asyncio.wait_for(done, RUN_TIMEOUT)
            return key, run_id, arrived - began, status
        except Exception as err:  # noqa: BLE001 - counted and reported
            return key, run_id, None, f"{type(err).__name__}: {err}"
        finally:
            eng.forget(run_id)

    outcomes = await asyncio.gather(*(one(key) for key in sequence))
    if profiler is not None:
        profile = profiler.stop()
    memory = await sampler.stop()
    memory.pop("series")
    eng.check_alive()
    await asyncio.sleep(0.5)
    after = await stream_seqs(eng)
    writes = {k: round((after[k] - before[k]) / len(sequence), 2) for k in after}
    ends: dict[str, list[float]] = {name: [] for name in names}
    failures = [f"{run_id}: {status}" for _, run_id, _, status in outcomes if status != WORKFLOW_COMPLETED]
    for key, _, end, status in outcomes:
        if status == WORKFLOW_COMPLETED:
            ends[key].append(end)
    per_key = {
        key: {
            "runs": len(times),
            "first_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "last_s": round(max(times), 3),
        }
        for key, times in ends.items()
        if times
    }
    lasts = [v["last_s"] for v in per_key.values()]
    completed = [(k, r) for k, r, _, s in outcomes if s == WORKFLOW_COMPLETED]
    period = float(FAIR_RULE["period"].removesuffix("s"))
    admissions = await admission_times(eng, completed, period)
    admissions.update(await windows.stop(period))
    if profiler is not None:
        admissions["profile"] = profile
    return {
        "order": order,
        "runs": len(sequence),
        "failed": len(failures),
        "first_failures": failures[:3],
        "starts_acked_s": [round(min(starts_acked), 3), round(max(starts_acked), 3)] if starts_acked else None,
        "per_key": per_key,
        "last_spread_s": round(max(lasts) - min(lasts), 3) if lasts else None,
        "last_range_s": [min(lasts), max(lasts)] if lasts else None,
        "all_done_s": max(lasts) if lasts else None,
        "engine": memory,
        "writes_per_run": writes,
        **admissions,
    }


async def admission_times(eng: EngineUnderTest, runs: list[tuple[str, str]], period: float) -> dict:
    """From the runs' histories: per key the most tasks whose handler started within any one
    period (by the worker's clock, ``started_at`` of step.completed: at most the limit if
    dispatch kept to it, give or take delivery jitter), and how often runs were told to wait."""
    gate = asyncio.Semaphore(20)

    async def read(key: str, run_id: str) -> tuple[str, float | None, int]:
        async with gate:
            events = await eng.client.events(run_id)
        started = [e.get("started_at") for e in events if e["type"] == "step.completed" and e.get("started_at")]
        limited = sum(1 for e in events if e["type"] == "step.limited")
        when = datetime.fromisoformat(started[0]).timestamp() if started else None
        return key, when, limited

    rows = await asyncio.gather(*(read(key, run_id) for key, run_id in runs))
    by_key: dict[str, list[float]] = {}
    for key, when, _ in rows:
        if when is not None:
            by_key.setdefault(key, []).append(when)
    most = {key: most_in_window(sorted(times), period) for key, times in by_key.items()}
    waits = [limited for _, _, limited in rows]
    return {
        "most_started_in_one_period": max(most.values()) if most else None,
        "most_started_in_one_period_per_key": most,
        "limited_per_run": {
            "mean": round(statistics.mean(waits), 2) if waits else None,
            "max": max(waits) if waits else None,
            "total": sum(waits),
        },
    }


def most_in_window(times: list[float], period: float) -> int:
    """The most of the sorted `times` that fall in any half-open window of `period` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= period:
            start += 1
        best = max(best, end - start + 1)
    return best


# ---- 3. scale --------------------------------------------------------------------------------------


async def scale(procs: Processes, size: dict, profile_at: str | None, stamp: str) -> dict:
    server = procs.server("scale", sync_always=True)
    try:
        async with EngineUnderTest(procs, server) as eng:
            await eng.client.register(one_step("keyed", "noop_b", {"keyed_rate_limit": SCALE_RULE}))
            await eng.client.register(one_step("plain", "noop_c", {}))
            await asyncio.sleep(1.0)
            result: dict = {"rule": SCALE_RULE, "runs": size["scale_runs"], "idle": engine_status(eng)}
            for workflow in ("keyed", "plain"):
                log(f"scale: {size['scale_runs']} runs of {workflow}, {IN_FLIGHT} in flight")
                profiler = None
                if workflow == "keyed" and profile_at == "scale":
                    profiler = Profiler(RESULTS / f"profile-limits-scale-{stamp}")
                    profiler.start(eng.engine.pid)
                sampler = Sampler(eng.engine.pid)
                loaded = await batch(eng, workflow, size["scale_runs"], IN_FLIGHT)
                loaded["engine"] = await sampler.stop()
                if profiler is not None:
                    loaded["profile"] = profiler.stop()
                await asyncio.sleep(2.0)
                loaded["engine_after_2s"] = engine_status(eng)
                result[workflow] = loaded
                if workflow == "keyed":
                    result["listing"] = await listing(eng)
            return result
    finally:
        procs.stop(server)


async def listing(eng: EngineUnderTest) -> dict:
    """The flow_control bucket after the keyed run, and how the ``limits`` listing copes with it."""
    js = eng.client.nc.jetstream()
    info = await js.stream_info(f"KV_{FLOW_BUCKET}")
    found: dict = {"flow_kv_keys": info.state.messages, "flow_kv_bytes": info.state.bytes}
    for label, prefix in (("all", ""), ("prefix matching none", "task.")):
        began = time.perf_counter()
        try:
            shown = await eng.client.limits(prefix)
            found[label] = {"seconds": round(time.perf_counter() - began, 3), "keys_listed": len(shown)}
        except Exception as err:  # noqa: BLE001 - what it answered is the measurement
            found[label] = {"seconds": round(time.perf_counter() - began, 3), "error": f"{type(err).__name__}: {err}"}
    found["engine_after_listing"] = engine_status(eng)
    return found


# ---- the entry -------------------------------------------------------------------------------------


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict, stamp: str) -> None:
    size = QUICK if args.quick else FULL
    wanted = set(args.only or PHASES)
    makers = {
        "overhead": lambda: overhead(procs, size, args.profile, stamp),
        "fairness": lambda: fairness(procs, size, args.profile, stamp),
        "scale": lambda: scale(procs, size, args.profile, stamp),
    }
    for name in PHASES:
        if name not in wanted:
            continue
        log(f"{name} ...")
        began = time.perf_counter()
        try:
            results[name] = await asyncio.wait_for(makers[name](), PHASE_SECONDS)
        except Exception as err:  # noqa: BLE001 - report it and go on with the next phase
            results["errors"].append(f"{name}: {type(err).__name__}: {err}")
            traceback.print_exc()
            continue
        log(f"{name} done in {time.perf_counter() - began:.1f} s")
    if "overhead" in results:
        rounds = results["overhead"]["rounds"]
        results["overhead"]["pooled"] = {
            kind: {variant: pooled(rounds, kind, variant) for variant in VARIANTS} for kind in ("loaded", "unloaded")
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    settings = {
        "quick": args.quick,
        **size,
        "in_flight": IN_FLIGHT,
        "steps_per_chain_run": STEPS_PER_RUN,
        "variants": {k: v[1] for k, v in VARIANTS.items()},
        "worker_max_concurrent": 100,
    }

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results, stamp)

    return run_session("{stamp}-limits", settings, phases, limits_report.render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
