"""``dagnats run trace ID``: the run's span tree, projected from its history.

No collector is needed: the spans are the ones the engine exports
(``domain/trace_spans.py``), computed here from the recorded events. The
human form is an indented tree (name, duration, status, attempts, waits);
``--json`` prints every span exactly.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec

from dagnats.domain.errors import RunNotFound
from dagnats.domain.events import decode_record, parse_timestamp
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.trace_spans import ERROR, QUEUE, RunTrace, Span, SpanLink, project

from ..client import Client
from ..wire.connection import nats_url
from ..wire.names import HISTORY_STREAM
from ..wire.reading import stored_batches
from ..wire.subjects import history_subject


def add_parser(run_commands: Any, common: argparse.ArgumentParser) -> None:
    p = run_commands.add_parser("trace", parents=[common], help="show a run's span tree (from its history)")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    trace = asyncio.run(load(nats_url(getattr(args, "nats_url", None)), args.run_id))
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(spans_json(trace)), indent=2).decode())
    else:
        print(tree(trace))
    return 0


async def load(url: str, run_id: str) -> RunTrace:
    subject = history_subject(check_identifier("run id", run_id))
    async with Client(url) as client:
        assert client.nc is not None
        js = client.nc.jetstream()
        records = [
            (msg.seq or 0, decode_record(msg.data or b"[]"))
            async for msg in stored_batches(js, HISTORY_STREAM, subject)
        ]
    if not records:
        raise RunNotFound(run_id)
    return project(records, run_id)


def _duration_ms(span: Span) -> int | None:
    if not span.end:
        return None
    return int((parse_timestamp(span.end) - parse_timestamp(span.start)).total_seconds() * 1000)


def spans_json(trace: RunTrace) -> dict[str, Any]:
    return {
        "run_id": trace.run_id,
        "trace_id": trace.trace_id,
        "spans": [{**msgspec.to_builtins(s), "duration_ms": _duration_ms(s)} for s in _ordered(trace)],
    }


def _ordered(trace: RunTrace) -> list[Span]:
    return sorted(trace.spans(), key=lambda s: (s.start, s.kind != "run", s.span_id))


def _ms(value: int | None) -> str:
    if value is None:
        return "running"
    return f"{value} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _line(span: Span) -> str:
    status = {"ok": "ok", "error": "ERROR", "unset": ""}[span.status] if span.end else "open"
    extra = []
    if span.kind != QUEUE and span.attempt:
        extra.append(f"attempt {span.attempt}")
    if "dagnats.queue_ms" in span.attributes:
        extra.append(f"queued {_ms(span.attributes['dagnats.queue_ms'])}")
    waits = [e.name for e in span.events if e.name not in ("queued", "exception")]
    if waits:
        extra.append(", ".join(waits))
    after = [str(link.attributes.get("dagnats.step_id", "")) for link in span.links if _depends(link)]
    if after:
        extra.append("after " + ", ".join(after))
    others = [link for link in span.links if not _depends(link)]
    extra += [f"{link.attributes.get('dagnats.link', 'link')} {link.span_id}" for link in others]
    if span.status == ERROR and span.error:
        extra.append(f"error: {span.error[:80]}")
    return f"{span.name}  {_ms(_duration_ms(span))}  {status}".rstrip() + (f"  ({'; '.join(extra)})" if extra else "")


def _depends(link: SpanLink) -> bool:
    return link.attributes.get("dagnats.link") == "depends_on"


def tree(trace: RunTrace) -> str:
    """The spans as an indented tree, children under their parent, in start order."""
    spans = _ordered(trace)
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_id if s.parent_id in ids else "", []).append(s)
    lines = [f"Trace {trace.trace_id}  (run {trace.run_id})"]

    def walk(parent: str, depth: int) -> None:
        for s in children.get(parent, []):
            lines.append("  " * depth + _line(s))
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
