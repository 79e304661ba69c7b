"""Benchmark: rebuild a run from a 10,000-event history, as the engine does on recovery.

    python bench/rebuild.py [--items N] [--repeats N] [--out FILE] [--keep]

Issue 10: "replaying a 10,000-event history into a RunActor takes < 1 s". Theory of
operation. A fresh nats-server (``sync_interval: always``), one ``dagnats serve
--external`` engine and the map worker of bench/map.py run one real run of
``list -> each (map of --items) -> sum``: its history is 2 x items + 8 events (a
``step.queued`` and a ``step.completed`` per element), written by the engine in
however many records it batched them into. Then, in this process, ``--repeats`` times:

- ``HistoryStore.load(run)``: what ``RunActor._load`` calls when an actor comes up on
  recovery: the snapshot (of a run this large, a summary at sequence 0, so it is not
  used), every record after it read (batched direct gets, then the leader's tail) and
  decoded, and every event folded. Timed whole, and in parts: the read (bytes only),
  the decode, the fold (``domain.fold.fold`` event by event, as ``load`` does);
- ``domain.decide.recover(run, now)``: what the rebuilt actor decides to re-issue (in
  the JSON only: the run has ended, so there is nothing to re-issue).

The same is then measured on a second run whose history holds the same events, one
per record (appended straight to ``history.<run>`` with the run id replaced): the
worst case for the read, one stored message per event.

Prints a table and writes bench/results/rebuild-<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import nats

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.map import run_map  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402
from dagnats.domain.decide import recover  # noqa: E402
from dagnats.domain.events import decode_record, encode_event  # noqa: E402
from dagnats.domain.fold import fold  # noqa: E402
from dagnats.domain.state import WorkflowRun  # noqa: E402
from dagnats.infra.client import Client  # noqa: E402
from dagnats.infra.engine.history import HistoryStore  # noqa: E402
from dagnats.infra.wire.names import HISTORY_STREAM  # noqa: E402
from dagnats.infra.wire.reading import stored_batches  # noqa: E402
from dagnats.infra.wire.subjects import history_subject  # noqa: E402

ITEMS, REPEATS = 4_996, 5  # 2 x 4,996 + 8 = 10,000 events
GOAL_S = 1.0
PENDING_PUBLISHES = 2_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: rebuild a run from a long history")
    parser.add_argument("--items", type=int, default=ITEMS, help=f"map elements ({ITEMS:,}: 10,000 events)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"timed rebuilds of each history ({REPEATS})")
    session_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.items <= 10_000 or args.repeats < 1:
        parser.error("--items must be 1..10000, --repeats 1 or more")
    return args


async def time_rebuild(js, run_id: str, repeats: int) -> dict:
    """``repeats`` rebuilds of ``run_id``: whole (``HistoryStore.load``) and in parts."""
    store = HistoryStore(js)
    times: dict[str, list[float]] = {k: [] for k in ("load", "read", "decode", "fold", "recover")}
    run, records, events = None, 0, 0
    for _ in range(repeats):
        began = time.perf_counter()
        run, last_seq = await store.load(run_id)
        times["load"].append(time.perf_counter() - began)
        began = time.perf_counter()
        raw = [msg.data or b"" async for msg in stored_batches(js, HISTORY_STREAM, history_subject(run_id))]
        times["read"].append(time.perf_counter() - began)
        began = time.perf_counter()
        decoded = [decode_record(data) for data in raw]
        times["decode"].append(time.perf_counter() - began)
        began = time.perf_counter()
        folded = WorkflowRun(run_id=run_id)
        for batch in decoded:
            for event in batch:
                folded = fold(folded, event)
        times["fold"].append(time.perf_counter() - began)
        began = time.perf_counter()
        recover(folded, datetime.now(UTC))
        times["recover"].append(time.perf_counter() - began)
        records, events = len(raw), sum(len(batch) for batch in decoded)
    assert run is not None
    return {
        "records": records,
        "events": events,
        "bytes": sum(len(data) for data in raw),
        "status": str(run.status),
        "last_seq": last_seq,
        **{f"{k}_s": [round(v, 4) for v in vs] for k, vs in times.items()},
        **{f"{k}_median_s": round(statistics.median(vs), 4) for k, vs in times.items()},
    }


async def one_event_per_record(url: str, run_id: str, copy_id: str) -> dict:
    """Append ``run_id``'s events to ``copy_id``'s history, one record per event."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=PENDING_PUBLISHES)
        src, dst = run_id.encode(), copy_id.encode()
        acks = []
        began = time.perf_counter()
        async for msg in stored_batches(js, HISTORY_STREAM, history_subject(run_id)):
            for event in decode_record(msg.data or b"[]"):
                body = b"[" + encode_event(event).replace(src, dst) + b"]"
                acks.append(await js.publish_async(history_subject(copy_id), body))
        for ack in acks:
            await ack
        return {"records": len(acks), "write_s": round(time.perf_counter() - began, 2)}
    finally:
        await nc.close()


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("rebuild", sync_always=True)
    url = server.url
    results["map"] = mapped = {"items": args.items, "concurrency": 0}
    say(f"one run with a map of {args.items:,} elements ...")
    map_args = argparse.Namespace(items=args.items, concurrency=0, max_seconds=300.0)
    engine, run_id = await run_map(procs, server, map_args, None, mapped)
    if "error" in mapped:
        results["errors"].append(f"map: {mapped['error']}")
    procs.stop(engine)  # the rebuild below is measured alone
    copy_id = f"{run_id}-flat"
    say("the same events one per record ...")
    results["flat_copy"] = await one_event_per_record(url, run_id, copy_id)
    async with Client(url, timeout=30) as client:
        js = client.nc.jetstream()
        for key, rid in (("as_written", run_id), ("one_per_record", copy_id)):
            say(f"{args.repeats} rebuilds of {rid} ...")
            results[key] = await time_rebuild(js, rid, args.repeats)
    procs.stop(server)


def assess(results: dict) -> None:
    results["goal"] = {
        key: {"load_median_s": results[key]["load_median_s"], "met": results[key]["load_median_s"] < GOAL_S}
        for key in ("as_written", "one_per_record")
        if key in results
    }


def render(results: dict) -> str:
    mapped = results.get("map", {})
    out = [
        f"dagnats rebuild benchmark: one run's history (a map of {mapped.get('items'):,} elements), "
        "rebuilt as an actor does on recovery",
        "",
    ]
    out += machine_rows(results) + [""]
    rows = []
    for key, label in (("as_written", "as the engine wrote it"), ("one_per_record", "one event per record")):
        r = results.get(key)
        if not r:
            continue
        met = "met" if r["load_median_s"] < GOAL_S else "MISSED"
        rows.append(
            [
                label,
                f"{r['events']:,}",
                f"{r['records']:,}",
                f"{r['bytes'] / 1e6:.1f}",
                f"{_num(r['load_median_s'], 3)} ({met})",
                _num(r["read_median_s"], 3),
                _num(r["decode_median_s"], 3),
                _num(r["fold_median_s"], 3),
            ]
        )
    out += _table(
        ["history", "events", "records", "MB", "load s (goal < 1)", "read s", "decode s", "fold s"],
        rows,
        {1, 2, 3, 4, 5, 6, 7},
    )
    out.append(
        f"(medians of {results.get('settings', {}).get('repeats')} rebuilds each, in the bench process; "
        "load = snapshot get + read + decode + fold, as HistoryStore.load)"
    )
    if mapped.get("seconds"):
        out.append(f"the map run itself: {mapped['seconds'].get('run_ended')} s, status {mapped.get('status')}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"items": args.items, "repeats": args.repeats}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("rebuild-{stamp}", settings, phases, render, keep=args.keep, out=args.out, assess=assess)


if __name__ == "__main__":
    sys.exit(main())
