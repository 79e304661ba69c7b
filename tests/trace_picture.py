"""A real trace of an example, drawn as a waterfall: ``python tests/trace_picture.py [OUT.svg]``.

Runs ``examples/fan-out`` (upload -> small, medium, large -> publish: a fan-out
and a join) with the example's own handlers, the medium resize failing its
first attempt (a retry), under ``dagnats serve --external`` and ``dagnats
worker`` processes exporting OTLP to the test receiver (``otlp_receiver``).
The spans they export, the engine's projected from the history and the
worker's one per delivery, are drawn as hand-written SVG and written to
``docs/trace-fan-out.svg`` (or OUT.svg): the picture in docs/tracing.md,
rendered from exported data since no Jaeger runs here.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

from dagnats.infra.engine.server import NatsServer

from e2e_support import EXAMPLES, ROOT, Cli, Serve, WorkerProc, wait_for
from otlp_receiver import OtlpReceiver, ReceivedSpan

WORKER_FILE = """
import importlib.util

from dagnats.infra.worker import TaskContext, Worker

_spec = importlib.util.spec_from_file_location("fan_out_example", {example!r})
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

w = Worker(worker_id="picture-worker")
w.task("fanout-upload")(example.upload)
w.task("fanout-publish")(example.publish)


@w.task("fanout-resize")
def resize(ctx: TaskContext, job: example.Resize) -> str:
    if ctx.step_id == "medium" and ctx.attempt == 1:
        raise RuntimeError("storage timed out")  # the picture's retry
    return example.resize(ctx, job)
"""

# ---- drawing ----------------------------------------------------------------------------

ROW, TOP, LEFT, WIDTH, INDENT = 24, 78, 300, 1100, 16
BAR = WIDTH - LEFT - 80
ENGINE_COLOR, WORKER_COLOR, QUEUE_COLOR, ERROR_COLOR = "#4e79a7", "#59a14f", "#c9c2bd", "#e15759"


def ordered(spans: list[ReceivedSpan]) -> list[tuple[ReceivedSpan, int]]:
    """Each span once (a backend keeps one per id), parents before children, by start."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in by_id.values():
        children[s.parent_id if s.parent_id in by_id else ""].append(s)
    rows: list[tuple[ReceivedSpan, int]] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        rows.append((span, depth))
        for child in sorted(children[span.span_id], key=lambda c: (c.start_ns, c.name)):
            walk(child, depth + 1)

    for root in sorted(children[""], key=lambda c: c.start_ns):
        walk(root, 0)
    return rows


def _duration(ns: float) -> str:
    ms = ns / 1e6
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _step(total_ns: float) -> float:
    """A round tick interval giving at most eight ticks."""
    raw = total_ns / 8
    base = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def _color(span: ReceivedSpan) -> str:
    if span.status == 2:
        return ERROR_COLOR
    if span.name == "queued":
        return QUEUE_COLOR
    return ENGINE_COLOR if span.service == "dagnats-engine" else WORKER_COLOR


def render_svg(spans: list[ReceivedSpan], title: str) -> str:
    """The waterfall of one trace: a row per span, bars on a shared time axis, span events
    as ticks, links (a join's dependencies) as dashed curves."""
    rows = ordered(spans)
    t0 = min(s.start_ns for s, _ in rows)
    total = max(max(s.end_ns for s, _ in rows) - t0, 1)
    height = TOP + ROW * len(rows) + 40
    x = lambda ns: LEFT + (ns - t0) / total * BAR  # noqa: E731 - a scale, read like one
    y = {s.span_id: TOP + i * ROW for i, (s, _) in enumerate(rows)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    legend = [
        (ENGINE_COLOR, "engine (projected from the history)"),
        (WORKER_COLOR, "worker delivery"),
        (QUEUE_COLOR, "queued"),
        (ERROR_COLOR, "error"),
    ]
    lx = 10
    for color, text in legend:
        out.append(f'<rect x="{lx}" y="34" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 17}" y="44" fill="#333">{html.escape(text)}</text>')
        lx += 30 + 7 * len(text)
    tick = _step(total)
    for i in range(int(total // tick) + 1):
        tx = x(t0 + i * tick)
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 12}" x2="{tx:.1f}" y2="{height - 30}" stroke="#eee"/>')
        out.append(f'<text x="{tx:.1f}" y="{TOP - 16}" fill="#777" text-anchor="middle">{_duration(i * tick)}</text>')
    for i, (span, depth) in enumerate(rows):
        top = y[span.span_id]
        if i % 2:
            out.append(f'<rect x="0" y="{top - 3}" width="{WIDTH}" height="{ROW}" fill="#f7f7f9"/>')
        attempt = span.attributes.get("dagnats.attempt")
        shown = f"{span.name} · attempt {attempt}" if span.name.startswith("step ") and attempt else span.name
        name = html.escape(shown)
        out.append(f'<text x="{10 + depth * INDENT}" y="{top + 13}" fill="#222">{name}</text>')
        x1, x2 = x(span.start_ns), x(span.end_ns)
        tip = html.escape(f"{span.name} ({span.service}) {_duration(span.end_ns - span.start_ns)}")
        out.append(
            f'<rect x="{x1:.1f}" y="{top}" width="{max(x2 - x1, 2):.1f}" height="{ROW - 8}" rx="2" '
            f'fill="{_color(span)}"><title>{tip}</title></rect>'
        )
        out.append(f'<text x="{max(x2, x1 + 2) + 5:.1f}" y="{top + 12}" fill="#555" font-size="11">')
        out.append(f"{_duration(span.end_ns - span.start_ns)}</text>")
        for (event, _), at in zip(span.events, span.event_times, strict=False):
            ex = x(at)
            label = html.escape(event)
            out.append(f'<path d="M{ex:.1f},{top - 2} l4,5 l-4,5 l-4,-5 z" fill="#222"><title>{label}</title></path>')
    for span, _ in rows:
        joins = span.links if len(span.links) > 1 else []  # a single dependency is plain to see
        for linked in joins:
            if linked not in y:
                continue
            source = next(s for s, _ in rows if s.span_id == linked)
            sx, sy = x(source.end_ns), y[linked] + (ROW - 8) / 2
            tx, ty = x(span.start_ns), y[span.span_id] + (ROW - 8) / 2
            out.append(
                f'<path d="M{sx:.1f},{sy:.1f} C{sx + 30:.1f},{sy:.1f} {tx - 30:.1f},{ty:.1f} {tx:.1f},{ty:.1f}" '
                'fill="none" stroke="#9c755f" stroke-width="1.2" stroke-dasharray="4 3"/>'
            )
    note = "diamonds: span events (queued, retry scheduled, exception); dashed: the join's links to its dependencies"
    out.append(f'<text x="10" y="{height - 12}" fill="#777" font-size="11">{html.escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- a real run -----------------------------------------------------------------------------


def capture(work: Path) -> tuple[list[ReceivedSpan], dict]:
    """Run the example under serve + worker processes; the spans of its trace and its status."""
    with OtlpReceiver() as otlp:
        os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
        server = NatsServer(work / "nats", http_port=0)
        server.start_sync()
        worker_file = work / "picture_worker.py"
        worker_file.write_text(textwrap.dedent(WORKER_FILE.format(example=str(EXAMPLES / "fan-out" / "worker.py"))))
        engine, worker, cli = (
            Serve(server.url, external=True),
            WorkerProc.from_file(worker_file, server.url),
            Cli(server.url),
        )
        try:
            engine.start()
            worker.start()
            definition = json.loads((EXAMPLES / "fan-out" / "workflow.json").read_text())
            for step in definition["steps"]:
                if step["task"] == "fanout-resize":
                    step["retry"] = {"max_attempts": 2, "initial_delay": "300ms"}
            cli.register(definition, work)
            run_id = cli.start(definition["name"], "cat.png")
            run = cli.wait_status(run_id, {"completed", "failed"}, timeout=60)
            trace_id = run["trace_id"]
            wait_for(lambda: any(s.name.startswith("run ") for s in otlp.trace(trace_id)), 20, "the run span")
            time.sleep(1.0)  # the worker's last spans
        finally:
            worker.stop()
            engine.stop()
            server.stop_sync()
        return otlp.trace(trace_id), run


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "trace-fan-out.svg"
    with tempfile.TemporaryDirectory() as work:
        spans, run = capture(Path(work))
    unique = {s.span_id: s for s in spans}
    title = f"run {run['workflow']} ({run['status']}): trace {run['trace_id'][:12]}…, {len(unique)} spans"
    out.write_text(render_svg(list(unique.values()), title))
    print(f"wrote {out} ({len(unique)} spans)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
