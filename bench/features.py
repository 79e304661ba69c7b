"""Benchmark: what each feature costs on the 3-step chain, as a ratio of the plain chain.

    python bench/features.py [--quick] [--rounds N] [--runs N] [--sequential N] [--out FILE] [--keep]

Issue 10: "the cost of each feature on the 3-step chain (retry policy, timeout, rate
limit, concurrency limit) as a ratio of the plain chain". Theory of operation. One
fresh nats-server (``sync_interval: always``), one ``dagnats serve --external``, one
worker (bench/noop_worker.py, max_concurrent=100) and the completion observer of
run.py (bench/engine.py), all in one session. Five workflows, the chain ``a -> b -> c``
with, on every step:

- plain: nothing;
- retry: ``retry`` (3 attempts, exponential from 1 s; no step fails, so never used);
- timeout: ``timeout`` 30 s (its timer is armed when the worker reports
  ``step.started``, which it does only for handlers running over 50 ms: never here);
- rate limit: ``rate_limit`` 5,000 per 1 s (the most the engine accepts; never reached);
- concurrency limit: ``max_task_concurrency`` 1,000 (100 runs in flight never fill it).

After a warm-up of each, ``--rounds`` rounds; in each, every variant in turn runs a
loaded batch (``--runs`` runs, 100 in flight), then every variant a sequential batch
(``--sequential`` runs, one at a time), each round starting with the next variant
(plain first, then retry first, ...: the first batch after a change pays for it).
Per variant: runs/s pooled over the rounds (runs / summed wall time), the median of
the rounds' p50s, stored writes per run, and the ratio to plain. The rounds interleave
the variants so a shift in the shared machine's load falls on all of them.

Prints a table and writes bench/results/features-<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import EngineUnderTest  # noqa: E402
from bench.limits import IN_FLIGHT, batch, chain3, engine_status, pooled  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402
from dagnats.infra.wire.names import INBOX_STREAM, RUNS_BUCKET, TASK_STREAM  # noqa: E402

RETRY = {"max_attempts": 3, "strategy": "exponential", "initial_delay": "1s", "max_delay": "10s", "multiplier": 2.0}
# A name, the workflow it runs, what every step of it gets.
VARIANTS = {
    "plain": ("feat-plain", {}),
    "retry policy": ("feat-retry", {"retry": RETRY}),
    "timeout 30 s": ("feat-timeout", {"timeout": "30s"}),
    "rate limit 5,000/s": ("feat-rate", {"rate_limit": {"limit": 5_000, "period": "1s"}}),
    "concurrency limit 1,000": ("feat-slots", {"max_task_concurrency": 1000}),
}
FULL = {"rounds": 5, "runs": 400, "sequential": 50, "warmup": 20}
QUICK = {"rounds": 2, "runs": 200, "sequential": 30, "warmup": 10}
OTHER_STREAMS = {"inbox": INBOX_STREAM, "tasks": TASK_STREAM, "snapshots": f"KV_{RUNS_BUCKET}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: the cost of each feature on the 3-step chain")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--rounds", type=int, help="rounds of every variant (5; quick 2)")
    parser.add_argument("--runs", type=int, help="runs per loaded batch, 100 in flight (400; quick 200)")
    parser.add_argument("--sequential", type=int, help="runs per one-at-a-time batch (50; quick 30)")
    session_options(parser)
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    for key in ("rounds", "runs", "sequential"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if min(size.values()) < 1:
        parser.error("counts must be 1 or more")
    args.size = size
    return args


async def measure(eng: EngineUnderTest, workflow: str, runs: int, in_flight: int) -> dict:
    """limits.batch (CPU, history and flow KV writes per run) plus the other streams' writes."""
    js = eng.client.nc.jetstream()
    before = {k: (await js.stream_info(name)).state.last_seq for k, name in OTHER_STREAMS.items()}
    result = await batch(eng, workflow, runs, in_flight)
    done = max(1, result["runs"] + result["failed"])
    for k, name in OTHER_STREAMS.items():
        result["writes_per_run"][k] = round(((await js.stream_info(name)).state.last_seq - before[k]) / done, 2)
    return result


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    size = args.size
    server = procs.server("features", sync_always=True)
    async with EngineUnderTest(procs, server) as eng:
        for workflow, extra in VARIANTS.values():
            await eng.client.register(chain3(workflow, extra))
        results["idle"] = engine_status(eng)
        for workflow, _ in VARIANTS.values():
            await batch(eng, workflow, size["warmup"], 10)
        rounds: list[dict] = []
        names = list(VARIANTS)
        for number in range(size["rounds"]):
            this: dict = {"loaded": {}, "unloaded": {}}
            shift = number % len(names)
            order = names[shift:] + names[:shift]  # each round starts with another variant
            for variant in order:
                say(f"round {number + 1}: {variant}, {IN_FLIGHT} in flight")
                this["loaded"][variant] = await measure(eng, VARIANTS[variant][0], size["runs"], IN_FLIGHT)
            for variant in order:
                workflow = VARIANTS[variant][0]
                say(f"round {number + 1}: {variant}, one at a time")
                this["unloaded"][variant] = await measure(eng, workflow, size["sequential"], 1)
            rounds.append(this)
        results["after"] = engine_status(eng)
    results["rounds"] = rounds
    results["variants"] = summary = {}
    for variant in VARIANTS:
        summary[variant] = {
            "loaded": pooled(rounds, "loaded", variant),
            "unloaded": pooled(rounds, "unloaded", variant),
        }
    plain = summary["plain"]
    for variant, data in summary.items():
        loaded, unloaded = data["loaded"], data["unloaded"]
        data["ratio_runs_per_s"] = round(loaded["runs_per_s"] / plain["loaded"]["runs_per_s"], 3)
        data["ratio_loaded_p50"] = round(loaded["p50_ms"] / plain["loaded"]["p50_ms"], 3)
        data["ratio_unloaded_p50"] = round(unloaded["p50_ms"] / plain["unloaded"]["p50_ms"], 3)
        per_round = zip(loaded["per_round_runs_per_s"], plain["loaded"]["per_round_runs_per_s"], strict=True)
        data["ratio_runs_per_s_per_round"] = [round(v / p, 3) for v, p in per_round]
        failed = loaded["failed"] + unloaded["failed"]
        if failed:
            results["errors"].append(f"{variant}: {failed} runs failed")
    procs.stop(server)


def render(results: dict) -> str:
    size = results.get("settings", {})
    out = [
        f"dagnats features benchmark: the 3-step chain with each feature on every step, {size.get('rounds')} rounds "
        f"of {size.get('runs')} runs ({IN_FLIGHT} in flight) and {size.get('sequential')} one at a time",
        "",
    ]
    out += machine_rows(results) + [""]
    rows = []
    for variant, data in results.get("variants", {}).items():
        loaded, unloaded = data["loaded"], data["unloaded"]
        writes = loaded["writes_per_run"]
        rounds = ", ".join(f"{r:.0%}" for r in data["ratio_runs_per_s_per_round"])
        rows.append(
            [
                variant,
                _num(loaded["runs_per_s"]),
                f"{data['ratio_runs_per_s']:.1%} ({rounds})",
                _num(loaded["p50_ms"]),
                _num(unloaded["p50_ms"], 2),
                f"{data['ratio_unloaded_p50']:.2f}x",
                f"{writes.get('history', 0):g}",
                f"{sum(writes.values()):g}",
                f"{loaded['cpu_percent'].get('engine', 0):g}%",
            ]
        )
    out += _table(
        [
            "variant",
            "runs/s",
            "ratio to plain (rounds)",
            "loaded p50 ms",
            "seq p50 ms",
            "seq p50 ratio",
            "history / run",
            "writes / run",
            "engine CPU",
        ],
        rows,
        {1, 2, 3, 4, 5, 6, 7, 8},
    )
    out.append("(runs/s pooled over the rounds; p50s the median of the rounds'; writes and CPU of the last round)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("features-{stamp}", dict(args.size), phases, render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
