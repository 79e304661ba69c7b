"""Benchmark: a second engine joining and leaving under load: what a hand-over costs a run.

    python bench/rebalance.py [--seconds S] [--in-flight N] [--via inbox|client] [--out FILE] [--keep]

When an engine joins, the engine that owned every partition hands it about half of them,
one at a time (it stops fetching, lets what it fetched be recorded, lets its runs' actors
go, deletes its owner key; the newcomer claims each on its next tick); when it leaves
(SIGTERM) it hands them back. Theory of operation. A fresh nats-server
(``sync_interval: always``), engine A and the no-op worker (bench/engine.EngineUnderTest),
the 3-step chain, its completion seen on one ordered history consumer. A closed loop keeps
``--in-flight`` runs going for ``--seconds``, each started by a fact published to the
inbox (``--via inbox``, the default: what a partition's consumer carries, as timers,
events and child outcomes do) or by ``Client.start`` (``--via client``: the control plane,
no inbox message); engine B (``dagnats serve --external``)
starts at a quarter of it and is stopped with SIGTERM at three quarters. Every run's start
and latency are kept. Reported: runs, runs/s, latency p50 / p99 / max before, during and
after B's stay, the runs slower than ``SLOW_S`` (a fact the server sent to an owner that
was letting go, left unread, comes back after the inbox consumer's ack wait, 30 s), and
the facts the engines' logs say they gave back as they stopped a partition.

Prints a table and writes bench/results/rebalance-<timestamp>.json (+ .txt), and --out.
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

from bench.engine import EngineUnderTest  # noqa: E402
from bench.map import start_engine  # noqa: E402
from bench.procs import Child, Processes  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402
from bench.stats import latency_summary, rate  # noqa: E402

SECONDS, IN_FLIGHT = 40.0, 100
SLOW_S = 10.0
RUN_TIMEOUT = 60.0
HANDED_BACK = re.compile(r"partition (\d+): handing back (\d+) messages")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: an engine joining and leaving under load")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"of load ({SECONDS:g})")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help=f"runs at a time ({IN_FLIGHT})")
    parser.add_argument("--via", choices=("inbox", "client"), default="inbox", help="how runs start (inbox)")
    session_options(parser)
    args = parser.parse_args(argv)
    if args.seconds < 8 or args.in_flight < 1:
        parser.error("--seconds must be 8 or more, --in-flight 1 or more")
    return args


async def load(
    eng: EngineUnderTest, via: str, seconds: float, in_flight: int, runs: list[tuple[float, float | None]]
) -> None:
    """``in_flight`` lanes of runs until ``seconds`` have passed; (start, latency or None) per run."""
    began = time.perf_counter()
    one = eng.run_once_direct if via == "inbox" else eng.run_once

    async def lane() -> None:
        while time.perf_counter() - began < seconds:
            start = time.perf_counter() - began
            try:
                runs.append((start, await one(RUN_TIMEOUT)))
            except Exception:  # noqa: BLE001 - counted as a run that did not complete
                runs.append((start, None))

    await asyncio.gather(*(lane() for _ in range(in_flight)))


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("nats", sync_always=True)
    runs: list[tuple[float, float | None]] = []
    timeline: dict[str, float] = {}
    async with EngineUnderTest(procs, server) as eng:
        await eng.run_once()  # warm: the definition cached, the first partitions claimed
        began = time.perf_counter()
        loading = asyncio.create_task(load(eng, args.via, args.seconds, args.in_flight, runs))
        await asyncio.sleep(args.seconds / 4)
        say("engine B joins")
        timeline["b_started_s"] = time.perf_counter() - began
        b, _ = await asyncio.to_thread(start_engine, procs, server.url, "engine-b")
        timeline["b_ready_s"] = time.perf_counter() - began
        await asyncio.sleep(max(0.0, args.seconds * 3 / 4 - (time.perf_counter() - began)))
        say("engine B leaves (SIGTERM)")
        timeline["b_stopping_s"] = time.perf_counter() - began
        await asyncio.to_thread(procs.stop, b)
        timeline["b_stopped_s"] = time.perf_counter() - began
        await loading
        timeline["load_ended_s"] = time.perf_counter() - began
        results["logs"] = {name: handed_back(child) for name, child in (("a", eng.engine), ("b", b))}
    results["timeline"] = {key: round(value, 2) for key, value in timeline.items()}
    results["runs"] = summarise(runs, timeline)


def handed_back(engine: Child) -> dict:
    """What an engine's log says about the partitions it let go of."""
    text = engine.log_path.read_text(errors="replace")
    found = [(int(p), int(n)) for p, n in HANDED_BACK.findall(text)]
    return {"facts_handed_back": sum(n for _, n in found), "partitions_with_facts_handed_back": len(found)}


def summarise(runs: list[tuple[float, float | None]], timeline: dict[str, float]) -> dict:
    """Per phase (by the run's start): before B, while B is there (from its start to its
    stop), after; and in all."""
    joined, left = timeline["b_started_s"], timeline["b_stopped_s"]
    phases = {
        "before": [r for r in runs if r[0] < joined],
        "with_b": [r for r in runs if joined <= r[0] < left],
        "after": [r for r in runs if r[0] >= left],
        "all": runs,
    }
    out: dict = {}
    for name, chosen in phases.items():
        done = [latency for _, latency in chosen if latency is not None]
        out[name] = {
            "runs": len(chosen),
            "completed": len(done),
            "not_completed": len(chosen) - len(done),
            f"slower_than_{SLOW_S:g}s": sum(1 for latency in done if latency > SLOW_S),
            **latency_summary(done),
        }
    out["runs_per_s"] = rate(len([r for r in runs if r[1] is not None]), timeline["load_ended_s"])
    return out


def render(results: dict) -> str:
    via = results.get("settings", {}).get("via", "?")
    out = [f"dagnats rebalance benchmark: engine B joins and leaves under load, runs started via {via}", ""]
    out += machine_rows(results) + [""]
    t = results.get("timeline", {})
    out.append(
        "timeline (s from the load's start): B started {} (ready {}), SIGTERM {} (stopped {}), load ended {}".format(
            *(_num(t.get(k), 2) for k in ("b_started_s", "b_ready_s", "b_stopping_s", "b_stopped_s", "load_ended_s"))
        )
    )
    out.append("")
    runs = results.get("runs", {})
    rows = []
    for phase in ("before", "with_b", "after", "all"):
        r = runs.get(phase)
        if not r:
            continue
        rows.append(
            [
                phase.replace("_", " "),
                str(r["runs"]),
                str(r["not_completed"]),
                _num(r.get("p50_ms")),
                _num(r.get("p99_ms")),
                _num(r.get("max_ms")),
                str(r[f"slower_than_{SLOW_S:g}s"]),
            ]
        )
    header = ["runs started", "runs", "not completed", "p50 ms", "p99 ms", "max ms", f"> {SLOW_S:g} s"]
    out += _table(header, rows, {1, 2, 3, 4, 5, 6})
    out.append(f"runs/s over the whole load: {_num(runs.get('runs_per_s'))}")
    for name, log in results.get("logs", {}).items():
        out.append(
            f"engine {name.upper()}: {log['facts_handed_back']} facts handed back as it let go of "
            f"{log['partitions_with_facts_handed_back']} partitions"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"seconds": args.seconds, "in_flight": args.in_flight, "via": args.via, "worker_max_concurrent": 100}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("rebalance-{stamp}", settings, phases, render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
