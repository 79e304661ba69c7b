"""Benchmark: 10,000 runs each waiting on a 1-hour sleep cost the engine (almost) nothing.

    python bench/sleepers.py [--runs N] [--in-flight N] [--no-restart] [--out FILE] [--keep]

Issue 10: "waiting runs cost nothing". Theory of operation. A fresh nats-server
(``sync_interval: always``, its own data directory) and one ``dagnats serve --external``
process; no worker (a sleep step needs none).

1. idle: the engine's VmRSS, VmHWM and thread count (``/proc/<pid>/status``) after it
   said "engine ready" and settled, and its CPU over a few quiet seconds.
2. sleepers: the one-step workflow ``sleeper`` (a ``sleep`` step of 1 hour) is
   registered and ``--runs`` runs of it are started with the async ``Client``, at most
   ``--in-flight`` start requests at a time; the RSS and threads are sampled every
   0.5 s meanwhile. An ordered push consumer on ``history.>`` notes each run's
   ``step.sleep.started``; timed: the start requests, and until every run sleeps.
3. with them: after a settle, the same readings as idle, the live run actors
   (``engine status``) and the engine's CPU over a few seconds.
4. restart (unless ``--no-restart``): the engine is killed with SIGKILL and started
   again; it waits for the dead engine's lease to lapse, then brings up every unfinished
   run of its partitions. RSS and threads are sampled for ``RESTART_WATCH`` seconds;
   no run may have ended.

Prints a table and writes bench/results/sleepers-<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.limits import Sampler  # noqa: E402
from bench.map import kill, start_engine  # noqa: E402
from bench.procs import Child, CpuMeter, Processes, proc_status  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402
from bench.watch import COMPLETED, FAILED, RunsWatch  # noqa: E402
from dagnats.infra.client import Client  # noqa: E402

SLEEPER = {"name": "sleeper", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "1h"}}]}
RUNS, IN_FLIGHT = 10_000, 100
SETTLE_S, CPU_WINDOW_S, RESTART_WATCH = 5.0, 10.0, 45.0
SLEEPING_TIMEOUT = 600.0
MEMORY_GOAL_MB = 50.0
RECOVERING = re.compile(r"partition \d+: recovering (\d+) unfinished runs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: many runs waiting on a 1-hour sleep")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"sleeping runs ({RUNS:,})")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help=f"start requests at a time ({IN_FLIGHT})")
    parser.add_argument("--no-restart", action="store_true", help="skip the kill -9 and restart with them")
    session_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.in_flight < 1:
        parser.error("--runs and --in-flight must be 1 or more")
    return args


async def reading(engine: Child, client: Client | None = None, cpu_window: float = CPU_WINDOW_S) -> dict:
    """RSS, peak RSS, threads, the engine's CPU over ``cpu_window`` s, and its live runs."""
    meter = CpuMeter({"engine": engine.pid})
    await asyncio.sleep(cpu_window)
    status = proc_status(engine.pid)
    out = {
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "hwm_mb": round(status["VmHWM"] / 1024, 1),
        "threads": status["Threads"],
        "cpu_percent": meter.read()["engine"],
    }
    if client is not None:
        live = (await client.engine_status())["engine"]
        out["live_runs"], out["active_runs"] = live.get("live_runs"), live.get("active_runs")
    return out


async def start_sleepers(client: Client, engine: Child, run_ids: list[str], in_flight: int) -> dict:
    gate = asyncio.Semaphore(in_flight)
    failures: list[str] = []

    async def start(run_id: str) -> None:
        async with gate:
            try:
                await client.start("sleeper", run_id=run_id)
            except Exception as err:  # noqa: BLE001 - counted and reported
                failures.append(f"{run_id}: {type(err).__name__}: {err}")

    sampler = Sampler(engine.pid)
    began = time.perf_counter()
    await asyncio.gather(*(start(run_id) for run_id in run_ids))
    started_s = time.perf_counter() - began
    return {
        "start_requests_s": round(started_s, 2),
        "starts_per_s": round(len(run_ids) / started_s, 1),
        "start_failures": len(failures),
        "first_failures": failures[:3],
        "_sampler": sampler,
        "_began": began,
    }


async def restart(procs: Processes, url: str, engine: Child, client: Client, watch: RunsWatch, runs: int) -> dict:
    kill(procs, engine)
    killed = time.perf_counter()
    new, ready_s = await asyncio.to_thread(start_engine, procs, url, "engine-restarted")
    ready_at = time.perf_counter()
    sampler = Sampler(new.pid)
    await asyncio.sleep(RESTART_WATCH)
    samples = await sampler.stop()
    log = new.log_path.read_text(errors="replace")
    recovering = sum(int(n) for n in _recovering(log))
    after = await reading(new, client, cpu_window=5.0)
    return {
        "start_to_ready_s": round(ready_s, 2),
        "kill_to_ready_s": round(ready_at - killed, 2),
        "runs_brought_up": recovering,
        "watched_s": RESTART_WATCH,
        "peak_rss_mb": samples["peak_rss"]["rss_mb"],
        "peak_threads": samples["peak_threads"]["threads"],
        "after": after,
        "ended_meanwhile": watch.count("completed") + watch.count("failed"),
        "_engine": new,
    }


def _recovering(log: str) -> list[str]:
    return RECOVERING.findall(log)


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("sleepers", sync_always=True)
    url = server.url
    engine, ready_s = await asyncio.to_thread(start_engine, procs, url, "engine")
    async with Client(url, timeout=30) as client:
        await asyncio.sleep(SETTLE_S)
        say("idle readings ...")
        results["idle"] = await reading(engine, client)
        results["idle"]["ready_s"] = round(ready_s, 2)
        await client.register(SLEEPER)
        watch = await RunsWatch(
            "nap-", {"sleeping": b'"type":"step.sleep.started"', "completed": COMPLETED, "failed": FAILED}
        ).subscribe(client.nc.jetstream())
        run_ids = [f"nap-{n:05d}" for n in range(args.runs)]
        say(f"starting {args.runs:,} sleepers, {args.in_flight} start requests at a time ...")
        started = await start_sleepers(client, engine, run_ids, args.in_flight)
        sampler, began = started.pop("_sampler"), started.pop("_began")
        want = args.runs - started["start_failures"]
        ok = await watch.wait_count("sleeping", want, SLEEPING_TIMEOUT, engine.check_alive)
        started["all_sleeping_s"] = round(max(watch.seen["sleeping"].values(), default=began) - began, 2)
        started["sleeping"] = watch.count("sleeping")
        if not ok:
            results["errors"].append(
                f"only {watch.count('sleeping')} of {want} runs sleeping after {SLEEPING_TIMEOUT:g} s"
            )
        samples = await sampler.stop()
        started["peak_rss_mb_while_starting"] = samples["peak_rss"]["rss_mb"]
        started["peak_threads_while_starting"] = samples["peak_threads"]["threads"]
        results["starting"] = started
        say("readings with them ...")
        await asyncio.sleep(SETTLE_S)
        results["with_sleepers"] = await reading(engine, client)
        results["with_sleepers"]["ended"] = watch.count("completed") + watch.count("failed")
        if not args.no_restart:
            say("SIGKILL the engine, start it again ...")
            results["restart"] = outcome = await restart(procs, url, engine, client, watch, args.runs)
            engine = outcome.pop("_engine")
        await watch.unsubscribe()
    procs.stop(engine)
    procs.stop(server)


def assess(results: dict) -> None:
    idle, busy = results.get("idle", {}), results.get("with_sleepers", {})
    if "rss_mb" in idle and "rss_mb" in busy:
        growth = round(busy["rss_mb"] - idle["rss_mb"], 1)
        results["goal"] = {
            "rss_growth_mb": growth,
            "threads_added": busy["threads"] - idle["threads"],
            "rss_met": growth <= MEMORY_GOAL_MB,
        }


def render(results: dict) -> str:
    s = results.get("settings", {})
    out = [f"dagnats sleepers benchmark: {s.get('runs'):,} runs each waiting on a 1-hour sleep, one engine", ""]
    out += machine_rows(results) + [""]
    idle, busy, st = results.get("idle", {}), results.get("with_sleepers", {}), results.get("starting", {})
    rows = []
    for label, r in (("idle (before any run)", idle), (f"with {st.get('sleeping', 0):,} sleeping", busy)):
        if r:
            rows.append(
                [
                    label,
                    _num(r.get("rss_mb")),
                    _num(r.get("hwm_mb")),
                    str(r.get("threads")),
                    f"{_num(r.get('cpu_percent'))}%",
                    str(r.get("live_runs", "-")),
                ]
            )
    rt = results.get("restart")
    if rt:
        a = rt["after"]
        rows.append(
            [
                f"restarted, {rt['watched_s'] + 5:g} s after ready",
                _num(a.get("rss_mb")),
                _num(a.get("hwm_mb")),
                str(a.get("threads")),
                f"{_num(a.get('cpu_percent'))}%",
                str(a.get("live_runs", "-")),
            ]
        )
    out += _table(["engine", "RSS MB", "peak MB", "threads", "CPU", "live actors"], rows, {1, 2, 3, 4, 5}) + [""]
    if st:
        rows = [
            [
                "start requests",
                f"{st['start_requests_s']} s ({_num(st['starts_per_s'])} starts/s), {st['start_failures']} failed",
            ],
            ["first start request -> every run sleeping", f"{st['all_sleeping_s']} s"],
            [
                "peak while starting",
                f"{_num(st['peak_rss_mb_while_starting'])} MB, {st['peak_threads_while_starting']} threads",
            ],
        ]
        goal = results.get("goal")
        if goal:
            met = "met" if goal["rss_met"] else "MISSED"
            rows.append(["RSS growth (goal <= 50 MB)", f"+{goal['rss_growth_mb']:g} MB: {met}"])
            rows.append(["threads added (goal: a fixed number)", f"+{goal['threads_added']}"])
        out += _table(["starting them", ""], rows, set()) + [""]
    if rt:
        rows = [
            ["kill -> restarted engine ready", f"{rt['kill_to_ready_s']} s"],
            ["runs brought up (its log)", f"{rt['runs_brought_up']:,}"],
            ["peak RSS / threads while bringing them up", f"{_num(rt['peak_rss_mb'])} MB / {rt['peak_threads']}"],
            ["runs that ended (must be 0)", str(rt["ended_meanwhile"])],
        ]
        out += _table(["kill -9 and restart with them", ""], rows, set())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"runs": args.runs, "in_flight": args.in_flight, "restart": not args.no_restart, "sleep": "1h"}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("sleepers-{stamp}", settings, phases, render, keep=args.keep, out=args.out, assess=assess)


if __name__ == "__main__":
    sys.exit(main())
