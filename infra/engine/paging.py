"""Pages of long answers: a run's events from a sequence, runs by cursor.

A page holds at most ``limit`` items and at most ``budget`` bytes of JSON,
and says where the next one starts (``next``: a history sequence, or an
opaque cursor), or ``None`` at the end. The client joins the pages.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from dagnats.domain.errors import InvalidRequest
from dagnats.domain.events import decode_record

from ..wire.names import HISTORY_STREAM
from ..wire.reading import stored_batches
from ..wire.subjects import history_subject
from .history import HistoryStore
from .views import event_view

_ENCODER = msgspec.json.Encoder()


async def events_page(store: HistoryStore, run_id: str, after_seq: int, limit: int, budget: int) -> dict[str, Any]:
    """Whole records after ``after_seq``, as event views, up to ``limit`` events and ``budget`` bytes."""
    events: list[dict[str, Any]] = []
    size, last_seq = 0, after_seq
    async for msg in stored_batches(store.js, HISTORY_STREAM, history_subject(run_id), after_seq):
        views = [event_view(msg.seq or 0, e) for e in decode_record(msg.data or b"[]")]
        cost = sum(len(_ENCODER.encode(v)) + 1 for v in views)
        if events and (len(events) + len(views) > limit or size + cost > budget):
            return {"events": events, "next": last_seq}
        events += views
        size += cost
        last_seq = msg.seq or last_seq
    return {"events": events, "next": None}


def runs_page(runs: list[dict[str, Any]], cursor: str | None, limit: int, budget: int) -> dict[str, Any]:
    """Run summaries (``views.run_summary``, or a reactive execution's), newest first;
    ``cursor`` is where the previous page ended (none or empty: the first page)."""
    ordered = sorted(runs, key=_order, reverse=True)
    if cursor:
        after = _decode_cursor(cursor)
        ordered = [r for r in ordered if _order(r) < after]
    page: list[dict[str, Any]] = []
    size = 0
    for index, summary in enumerate(ordered):
        cost = len(_ENCODER.encode(summary)) + 1
        if len(page) == limit or (page and size + cost > budget):
            return {"runs": page, "next": _encode_cursor(_order(ordered[index - 1]))}
        page.append(summary)
        size += cost
    return {"runs": page, "next": None}


def _order(summary: dict[str, Any]) -> tuple[str, str]:
    return (summary.get("created_at") or "", summary["run_id"])


def _encode_cursor(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(_ENCODER.encode(list(key))).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        created_at, run_id = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        return (str(created_at), str(run_id))
    except (ValueError, TypeError, msgspec.DecodeError):
        raise InvalidRequest("run.list", f"cursor {cursor!r} is not one this engine gave out") from None
