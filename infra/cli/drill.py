"""``dagnats drill``: a crash-recovery drill against the local cluster, or one of its own."""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from pathlib import Path

from . import render


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "drill", parents=[common], help="run instrumented workflows while killing processes; check the invariants"
    )
    p.add_argument("--seed", type=int, help="seed of the fault schedule (default: random, printed)")
    p.add_argument("--runs", type=int, default=50, help="runs to start (default 50)")
    p.add_argument("--rate", type=float, default=10.0, help="runs started per second (default 10)")
    p.add_argument("--faults", default="engine,worker,nats", help="kinds to inject: engine,worker,nats or none")
    p.add_argument("--faults-per-kind", type=int, default=1, help="faults of each kind (default 1)")
    p.add_argument("--poison", type=int, default=0, help="poison runs to add (they crash their actor; --local)")
    p.add_argument("--local", action="store_true", help="start a deployment of its own in a temp dir")
    p.add_argument("--nodes", type=int, default=1, choices=(1, 3), help="--local: nats-server nodes (default 1)")
    p.add_argument("--engines", type=int, default=2, help="--local: engines (default 2)")
    p.add_argument("--workers", type=int, default=2, help="worker processes the drill runs (default 2)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds after the load for runs to finish")
    p.add_argument("--dir", type=Path, help="cluster directory of `dagnats cluster up` (without --local)")
    p.add_argument("--keep", action="store_true", help="--local: keep the temp dir with the logs")
    p.set_defaults(func=cmd_drill)


def cmd_drill(args: argparse.Namespace) -> int:
    from ..drill.faults import parse_kinds
    from ..drill.runner import DrillOptions, run_drill

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    options = DrillOptions(
        seed=seed,
        runs=args.runs,
        rate=args.rate,
        kinds=parse_kinds(args.faults),
        faults_per_kind=args.faults_per_kind,
        poison=args.poison,
        local=args.local,
        nodes=args.nodes,
        engines=args.engines,
        workers=args.workers,
        deadline=args.deadline,
        cluster_dir=args.dir,
        keep=args.keep,
    )
    print(f"drill: seed {seed}", file=sys.stderr, flush=True)
    result = run_drill(options).to_json()
    rerun = _rerun(args, seed)
    result["rerun"] = rerun
    if args.json:
        from . import _print_json

        _print_json(result)
    else:
        print(render.drill_report(result, rerun))
    return 0 if result["ok"] else 1


def _rerun(args: argparse.Namespace, seed: int) -> str:
    argv = ["dagnats", "drill", "--seed", str(seed), "--runs", str(args.runs), "--rate", f"{args.rate:g}"]
    argv += ["--faults", args.faults, "--faults-per-kind", str(args.faults_per_kind)]
    if args.poison:
        argv += ["--poison", str(args.poison)]
    if args.local:
        argv += ["--local", "--nodes", str(args.nodes), "--engines", str(args.engines)]
    elif args.dir:
        argv += ["--dir", str(args.dir)]
    argv += ["--workers", str(args.workers), "--deadline", f"{args.deadline:g}"]
    return shlex.join(argv)
