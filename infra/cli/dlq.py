"""``dagnats dlq list|show|replay|discard``: the dead letters, for an operator.

Parse -> call -> render, as every command: ``--json`` prints the engine's
answer exactly; the human forms are below.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dagnats.domain.errors import InvalidInput

from .render import table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: tasks that failed for good").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = dlq.add_parser("list", parents=[common], help="list dead letters, oldest first")
    p.add_argument("--run", help="only the dead letters of this run")
    p.add_argument("--workflow", help="only those of this workflow")
    _time_range(p)
    p.add_argument("--limit", type=_positive, default=100, help="at most this many (default 100)")
    p.set_defaults(func=cmd_list)
    p = dlq.add_parser("show", parents=[common], help="show one dead letter with its task")
    p.add_argument("seq", type=_positive)
    p.set_defaults(func=cmd_show)
    p = dlq.add_parser(
        "replay",
        parents=[common],
        help="have the run take a dead letter's step up again (SEQ, --run ID, or --workflow NAME with a time range)",
    )
    p.add_argument("seq", type=_positive, nargs="?")
    p.add_argument("--run", help="replay the dead letters of this run")
    p.add_argument("--workflow", help="replay the dead letters of this workflow (within --since/--until)")
    _time_range(p)
    p.add_argument("--by", default="", help="who replays (recorded in the run's history)")
    p.set_defaults(func=cmd_replay)
    p = dlq.add_parser("discard", parents=[common], help="delete a dead letter")
    p.add_argument("seq", type=_positive)
    p.set_defaults(func=cmd_discard)


def _time_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="stored at or after this RFC3339 instant")
    p.add_argument("--until", help="stored at or before this RFC3339 instant")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {value}")
    return value


# ---- commands --------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from . import _show

    return _show(args, lambda c: c.dlq_list(args.run, args.workflow, args.limit, args.since, args.until), render_list)


def cmd_show(args: argparse.Namespace) -> int:
    from . import _show

    return _show(args, lambda c: c.dlq_show(args.seq), render_entry)


def cmd_replay(args: argparse.Namespace) -> int:
    from . import _show

    chosen = [name for name, given in (("SEQ", args.seq), ("--run", args.run), ("--workflow", args.workflow)) if given]
    if len(chosen) != 1:
        raise InvalidInput("dlq replay takes one of SEQ, --run ID or --workflow NAME")
    if (args.since or args.until) and not args.workflow:
        raise InvalidInput("--since and --until go with --workflow")
    if args.seq is not None:
        return _show(args, lambda c: c.dlq_replay(args.seq, by=args.by), render_replayed)
    return _show(
        args,
        lambda c: c.dlq_replay(run_id=args.run, workflow=args.workflow, since=args.since, until=args.until, by=args.by),
        lambda answer: render_replayed_many(answer, args.run, args.workflow),
    )


def cmd_discard(args: argparse.Namespace) -> int:
    from . import _show

    return _show(args, lambda c: c.dlq_discard(args.seq), lambda answer: f"Discarded dead letter {answer['seq']}")


# ---- human output -------------------------------------------------------------------------


def render_list(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "No dead letters."
    rows = [(e["seq"], e["task"], e["run_id"], e["step_id"], e["reason"], e["attempts"], e["time"]) for e in entries]
    return table(("SEQ", "TASK", "RUN", "STEP", "REASON", "ATTEMPTS", "TIME"), rows)


def render_entry(e: dict[str, Any]) -> str:
    fields = [
        ("Seq", e["seq"]),
        ("Task", e["task"]),
        ("Workflow", e["workflow"]),
        ("Run", e["run_id"]),
        ("Step", e["step_id"]),
        ("Reason", e["reason"]),
        ("Error", e["error"]),
        ("Attempt", e["attempts"]),
        ("Deliveries", e["deliveries"] or "-"),
        ("Queued on", e["task_subject"]),
        ("Time", e["time"]),
    ]
    lines = [f"{label + ':':<12}{value}" for label, value in fields]
    lines.append("Body:")
    lines += ["  " + line for line in json.dumps(e.get("body"), indent=2, ensure_ascii=False).splitlines()]
    return "\n".join(lines)


def render_replayed(answer: dict[str, Any]) -> str:
    return (
        f"Replayed dead letter {answer['seq']}: run {answer['run_id']} runs step {answer['step_id']} again "
        f"(attempt {answer['attempt']})"
    )


def render_replayed_many(answer: dict[str, Any], run_id: str | None, workflow: str | None) -> str:
    whose = f"run {run_id}" if run_id else f"workflow {workflow}"
    lines = [f"Replayed {len(answer['replayed'])} dead letters for {whose}"]
    for r in answer["replayed"]:
        lines.append(f"  {r['seq']}: run {r['run_id']} step {r['step_id']} (attempt {r['attempt']})")
    if answer["refused"]:
        lines.append(f"Refused {len(answer['refused'])}:")
        lines += [f"  {r['seq']}: {r['reason']}" for r in answer["refused"]]
    return "\n".join(lines)
