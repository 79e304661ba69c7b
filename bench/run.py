"""Benchmark entry: the engine against the raw JetStream loop, in one run.

    /work/venv/bin/python bench/run.py [--quick] [--profile] [--out FILE]

Phases, one after the other (the machine has 2 cores; nothing overlaps), each
on a fresh nats-server with its own data directory:

1. substrate (sync always): stored publishes to one stream, and round trips
   (publish task -> pull -> ack -> publish history -> pull), 1 and 100 at a time;
2. raw 3-step loop (sync always): loaded (100 runs in flight) and unloaded;
3. the same raw loop on a server with the default sync (fsync every 2 min);
4. the engine (sync always): warm-up, batch 1 (100 in flight), memory,
   unloaded runs, batch 2 (200 in flight), memory, then a batch whose start
   facts bypass the control plane (diagnostic); batch 1 optionally profiled;
   the unloaded runs' histories give the latency hop by hop;
5. the raw loop of phase 2 again, to show how much the shared machine drifted.

Prints a table and writes bench/results/<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import raw, report  # noqa: E402
from bench.engine import engine_bench  # noqa: E402
from bench.procs import REPO, Processes  # noqa: E402
from bench.profile import Profiler  # noqa: E402
from bench.session import run_session, session_options  # noqa: E402

RESULTS = REPO / "bench" / "results"

FULL = dict(
    publishes=1000,
    trips=1000,
    loops=100,
    trips_per_loop=50,
    raw_runs=2000,
    runs=1000,
    sequential_runs=200,
    warmup=20,
    concurrency=100,
    second_batch_concurrency=200,
)
QUICK = dict(
    publishes=200,
    trips=200,
    loops=100,
    trips_per_loop=10,
    raw_runs=400,
    runs=200,
    sequential_runs=50,
    warmup=20,
    concurrency=100,
    second_batch_concurrency=200,
)
PHASES = ("substrate", "raw", "raw-default", "engine", "raw-again")
PHASE_SECONDS = 300.0  # no phase may take longer than this
LOAD_SECONDS = 180.0  # no new run starts after this long in one load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: engine vs. raw JetStream loop")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run (~1 min)")
    parser.add_argument(
        "--profile", action="store_true", help="sample the engine with py-spy during engine batch 1 (slows the engine)"
    )
    parser.add_argument(
        "--only", choices=list(PHASES), action="append", help="run only these phases (repeatable); default all"
    )
    session_options(parser)
    return parser.parse_args(argv)


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict, stamp: str) -> None:
    size = QUICK if args.quick else FULL
    wanted = set(args.only or PHASES)

    async def phase(name: str, make) -> dict | None:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            value = await asyncio.wait_for(make(), PHASE_SECONDS)
        except Exception as err:  # noqa: BLE001 - report it and go on with the next phase
            results["errors"].append(f"{name}: {type(err).__name__}: {err}")
            traceback.print_exc()
            return None
        print(f"bench: {name} done in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        return value

    if "substrate" in wanted:
        server = procs.server("substrate", sync_always=True)
        sub = results["substrate"] = {"sync": "always"}
        sub["publish_sequential"] = await phase(
            "publish, 1 at a time", lambda: raw.publish_rate(server.url, 1, size["publishes"], 30)
        )
        sub["publish_concurrent"] = await phase(
            "publish, 100 at a time", lambda: raw.publish_rate(server.url, 100, size["publishes"] // 10, 30)
        )
        sub["round_trip_sequential"] = await phase(
            "round trips, 1 loop", lambda: raw.round_trips(server.url, 1, size["trips"], 60)
        )
        sub["round_trip_concurrent"] = await phase(
            "round trips, 100 loops", lambda: raw.round_trips(server.url, size["loops"], size["trips_per_loop"], 60)
        )
        procs.stop(server)

    async def raw_phase(name: str, sync: str, key: str) -> None:
        if name not in wanted:
            return
        server = procs.server(name, sync_always=sync == "always")
        value = await phase(
            f"{name}: raw 3-step loop, sync {sync}",
            lambda: raw.raw_loop(
                procs,
                server,
                name,
                runs=size["raw_runs"],
                sequential_runs=size["sequential_runs"],
                concurrency=size["concurrency"],
                warmup=size["warmup"],
                max_seconds=LOAD_SECONDS,
            ),
        )
        if value is not None:
            results.setdefault("raw_loop", {})[key] = {"sync": sync, **value}
        procs.stop(server)

    await raw_phase("raw", "always", "always")
    await raw_phase("raw-default", "default", "default")
    if "engine" in wanted:
        server = procs.server("engine", sync_always=True)
        profiler = Profiler(RESULTS / f"profile-{stamp}") if args.profile else None
        value = await phase(
            "engine",
            lambda: engine_bench(
                procs,
                server,
                runs=size["runs"],
                sequential_runs=size["sequential_runs"],
                concurrency=size["concurrency"],
                second_batch_concurrency=size["second_batch_concurrency"],
                warmup=size["warmup"],
                max_seconds=LOAD_SECONDS,
                profiler=profiler,
            ),
        )
        if profiler is not None:
            profiler.stop()  # no-op unless the phase failed while it was sampling
        if value is not None:
            results["engine"] = {
                "sync": "always",
                "profiled": bool(args.profile),
                "completion_observed_by": "one ordered push consumer on history.> in the bench process "
                "(no requests to the engine)",
                **value,
            }
        procs.stop(server)

    await raw_phase("raw-again", "always", "always_after_engine")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results, stamp)

    return run_session(
        "{stamp}",
        {"quick": args.quick, **size},
        phases,
        report.render,
        keep=args.keep,
        out=args.out,
        assess=report.assess,
    )


if __name__ == "__main__":
    sys.exit(main())
