"""``dagnats cluster up|down|status``: a local NATS cluster with engines, for drills and trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import render


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    cluster = commands.add_parser("cluster", help="a local NATS cluster with engines").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = cluster.add_parser("up", parents=[common], help="start nats-server nodes and engines that keep running")
    p.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5), help="nats-server nodes (default 3)")
    p.add_argument("--engines", type=int, default=2, help="`dagnats serve --external` processes (default 2)")
    p.add_argument("--workers-file", type=Path, help="also run `dagnats worker FILE.py`")
    p.add_argument(
        "--base-port",
        type=int,
        default=4222,
        help="client ports from here (routes +2000, monitoring +4000; 0: free ports)",
    )
    _dir(p)
    p.set_defaults(func=cmd_up)
    p = cluster.add_parser("status", parents=[common], help="show the cluster's processes and JetStream leaders")
    _dir(p)
    p.set_defaults(func=cmd_status)
    p = cluster.add_parser("down", parents=[common], help="stop every process of the cluster")
    _dir(p)
    p.set_defaults(func=cmd_down)


def _dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, help="cluster directory (default ~/.local/share/dagnats/cluster)")


def _directory(args: argparse.Namespace) -> Path:
    from ..drill.deployment import default_cluster_dir

    return args.dir or default_cluster_dir()


def cmd_up(args: argparse.Namespace) -> int:
    from ..drill import local_cluster

    local_cluster.up(_directory(args), args.nodes, args.engines, args.workers_file, args.base_port)
    view = local_cluster.status(_directory(args))
    if args.json:
        from . import _print_json

        _print_json(view)
    else:
        print(render.cluster_processes(view))
        print(f"\nUse it with: --nats-url {view['url']}   (stop it with: dagnats cluster down)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..drill import local_cluster

    view = local_cluster.status(_directory(args))
    if args.json:
        from . import _print_json

        _print_json(view)
    else:
        print(render.cluster_processes(view))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..drill import local_cluster

    result = local_cluster.down(_directory(args))
    if args.json:
        from . import _print_json

        _print_json(result)
    else:
        print(render.cluster_down(result))
    return 0
