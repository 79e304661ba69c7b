"""The waterfall drawn for docs/tracing.md (``tests/trace_picture.py``) from exported spans."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from trace_picture import ordered, render_svg

from otlp_receiver import ReceivedSpan

SVG = "{http://www.w3.org/2000/svg}"


def span(span_id: str, parent: str, name: str, start: int, end: int, **kw) -> ReceivedSpan:
    service = kw.pop("service", "dagnats-engine")
    return ReceivedSpan(service, "t" * 32, span_id, parent, name, start * 10**6, end * 10**6, 1, {}, **kw)


SPANS = [
    span("join", "run", "step c", 60, 90, links=["a", "b"]),
    span("run", "", "run demo", 0, 100),
    span("a", "run", "step a", 0, 40, events=[("queued", {})], event_times=[0]),
    span("b", "run", "step b", 0, 50),
    span("b", "run", "step b", 0, 50),  # exported twice: drawn once
    span("d", "b", "executeTask tb", 5, 45, service="dagnats-worker"),
    span("x", "missing", "orphan", 10, 20),
]


def test_rows_put_parents_before_children_each_span_once():
    rows = [(s.name, depth) for s, depth in ordered(SPANS)]
    assert rows == [
        ("run demo", 0),
        ("step a", 1),
        ("step b", 1),
        ("executeTask tb", 2),
        ("step c", 1),
        ("orphan", 0),
    ]


def test_the_svg_has_a_bar_per_span_the_events_and_the_joins_links():
    root = ET.fromstring(render_svg(SPANS, "run demo"))
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 6
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "run demo" in texts and "executeTask tb" in texts
    paths = list(root.iter(f"{SVG}path"))
    assert sum(p.get("stroke-dasharray") is not None for p in paths) == 2  # c links a and b
    assert any(p.find(f"{SVG}title") is not None and p.find(f"{SVG}title").text == "queued" for p in paths)
