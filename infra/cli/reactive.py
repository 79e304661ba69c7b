"""``dagnats reactive serve FILE.py | list``: reactive rule workflows (docs/reactive.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from .. import event_loop
from .render import table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    reactive = commands.add_parser("reactive", help="reactive rule workflows").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = reactive.add_parser("serve", parents=[common], help="run the reactive workflows defined in FILE.py")
    p.add_argument("file")
    p.set_defaults(func=cmd_serve)
    p = reactive.add_parser("list", parents=[common], help="list the registered reactive workflows")
    p.set_defaults(func=cmd_list)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from ..reactive.serve import serve

    logging.getLogger().setLevel(logging.INFO)
    event_loop.run(serve(args.file, getattr(args, "nats_url", None)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    workflows = asyncio.run(_workflows(getattr(args, "nats_url", None)))
    if args.json:
        print(json.dumps(workflows, indent=2))
        return 0
    if not workflows:
        print("No reactive workflows registered (start one with `dagnats reactive serve FILE.py`).")
        return 0
    rows = [[w["id"], str(len(w["rules"])), w["state_bucket"], w["description"]] for w in workflows]
    print(table(["WORKFLOW", "RULES", "STATE BUCKET", "DESCRIPTION"], rows))
    return 0


async def _workflows(url: str | None) -> list[dict[str, Any]]:
    import msgspec
    import nats

    from ..reactive.runtime import WORKFLOWS_BUCKET
    from ..wire.connection import nats_url, server_list
    from ..wire.reading import kv_entries

    nc = await nats.connect(servers=server_list(nats_url(url)))
    try:
        entries = await kv_entries(nc.jetstream(), WORKFLOWS_BUCKET, ">")
    except Exception:  # noqa: BLE001 - no bucket yet: nothing registered
        entries = []
    finally:
        await nc.close()
    return sorted((msgspec.json.decode(v) for _, v in entries), key=lambda w: w["id"])
