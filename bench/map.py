"""Benchmark: one run with a map of 10,000 elements, then the engine killed and restarted.

    python bench/map.py [--items N] [--concurrency N] [--max-seconds S] [--profile] [--out FILE] [--keep]

By default every element is in flight at once (the map's own default);
``--concurrency 100`` bounds it, as ``config.concurrency`` does.

Theory of operation. As in run.py, a fresh nats-server (``sync_interval:
always``), a ``dagnats serve --external`` engine and one worker process
(bench/map_worker.py, async handlers, max_concurrent=100) run as processes
of their own. The bench registers ``list -> each (map, max_items 10000) ->
sum`` and starts one run; ``list`` returns ``range(N)``, each instance
returns ``n + 1`` and ``sum`` adds them up. One ordered push consumer on the
run's history subject watches its records go by (bytes are searched for the
event types, nothing is decoded), which gives the moments the map started
and completed and the run ended, without asking the engine anything.

Then the run's history is read back (batched direct gets) and measured:
records, bytes, events; decoding and a pure ``replay`` of it in this process
are timed. The engine is killed with SIGKILL and started again, and the bench
times how long until ``Client.status(run)`` answers: first as the engine left
things (a terminal run has a snapshot in the ``workflow_runs`` KV), then,
after a second SIGKILL, with the snapshot deleted, so the engine has to
rebuild the run by folding its whole history.

Prints a table and writes bench/results/map-<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nats.js import api  # noqa: E402
from nats.js.errors import KeyNotFoundError, NotFoundError  # noqa: E402

from bench.procs import PYTHON, REPO, Child, CpuMeter, Processes, proc_status  # noqa: E402
from bench.profile import Profiler, py_spy_binary  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import run_session, session_options  # noqa: E402
from dagnats.domain.events import decode_record  # noqa: E402
from dagnats.domain.fold import replay  # noqa: E402
from dagnats.infra.client import Client  # noqa: E402
from dagnats.infra.engine.history import HistoryStore, snapshot_key  # noqa: E402
from dagnats.infra.engine.server import NatsServer  # noqa: E402
from dagnats.infra.wire.names import HISTORY_STREAM  # noqa: E402
from dagnats.infra.wire.reading import stored_batches  # noqa: E402
from dagnats.infra.wire.subjects import history_subject  # noqa: E402

RESULTS = REPO / "bench" / "results"
MAX_ITEMS = 10_000
MAP_SECONDS = 300.0  # by default the run must end within this long
READABLE_SECONDS = 120.0  # after a restart, the run's state must be readable within this long


def map_bench(concurrency: int) -> dict:
    """The workflow; ``concurrency`` 0 (the map's default) puts every element in flight at once."""
    config = {"max_items": MAX_ITEMS, **({"concurrency": concurrency} if concurrency else {})}
    return {
        "name": "map-bench",
        "steps": [
            {"id": "list", "task": "list"},
            {"id": "each", "task": "each", "type": "map", "depends_on": ["list"], "config": config},
            {"id": "sum", "task": "sum", "depends_on": ["each"]},
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: one map of 10,000 elements, and a restart")
    parser.add_argument("--items", type=int, default=MAX_ITEMS, help=f"elements in the map (at most {MAX_ITEMS})")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="the map's concurrency (elements in flight); default 0: all"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=MAP_SECONDS, help=f"give up on the run after this long ({MAP_SECONDS:g})"
    )
    parser.add_argument("--profile", action="store_true", help="sample the engine with py-spy while the map runs")
    session_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.items <= MAX_ITEMS:
        parser.error(f"--items must be 1..{MAX_ITEMS}")
    if args.concurrency < 0:
        parser.error("--concurrency must be 0 or more")
    if args.profile and py_spy_binary() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return args


# ---- watching the run's history go by ------------------------------------------------------


class HistoryWatch:
    """Counts a run's history records as the server pushes them and notes when marks pass."""

    MARKS = {
        "map_started": b'"type":"step.map.started"',
        "map_completed": b'"type":"step.map.completed"',
        "run_ended": b'"type":"workflow.',  # workflow.started is in the first record, skipped below
    }

    def __init__(self, began: float) -> None:
        self.began = began
        self.records = self.bytes = self.instance_results = 0
        self.seen: dict[str, float] = {}
        self.events = {name: asyncio.Event() for name in self.MARKS}

    async def on_record(self, msg) -> None:
        data = msg.data
        self.records += 1
        self.bytes += len(data)
        self.instance_results += data.count(b'"type":"step.completed"')
        for name, mark in self.MARKS.items():
            if name in self.seen or mark not in data:
                continue
            if name == "run_ended" and data.count(mark) == data.count(b'"type":"workflow.started"'):
                continue
            self.seen[name] = time.perf_counter() - self.began
            self.events[name].set()

    def progress(self) -> str:
        return f"{self.records} records, {self.bytes / 1e6:.1f} MB, {self.instance_results} step.completed"


async def report_progress(watch: HistoryWatch, engine: Child) -> None:
    while True:
        await asyncio.sleep(10)
        rss = proc_status(engine.pid)["VmRSS"] / 1024 if engine.alive() else 0
        elapsed = time.perf_counter() - watch.began
        print(f"bench: {elapsed:5.0f} s: {watch.progress()}, engine RSS {rss:.0f} MB", file=sys.stderr, flush=True)


# ---- the phases ---------------------------------------------------------------------------------


def start_engine(procs: Processes, url: str, name: str) -> tuple[Child, float]:
    """Start `dagnats serve --external`; the engine and how long it took to say it is ready."""
    began = time.perf_counter()
    engine = procs.child(name, [PYTHON, "-m", "dagnats.infra.cli", "serve", "--external", "--nats-url", url])
    engine.wait_for("engine ready", 60)
    return engine, time.perf_counter() - began


def kill(procs: Processes, child: Child) -> None:
    """SIGKILL, by its PID: no shutdown, no last snapshot."""
    assert child.proc is not None
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(10)
    procs.stop(child)  # only forgets it: it is dead already


async def run_map(
    procs: Processes, server: NatsServer, args: argparse.Namespace, profiler: Profiler | None, result: dict
) -> tuple[Child, str]:
    items = args.items
    url = server.url
    engine, _ = await asyncio.to_thread(start_engine, procs, url, "engine")
    worker = procs.child(
        "worker",
        [PYTHON, "-m", "dagnats.infra.cli", "worker", str(REPO / "bench" / "map_worker.py"), "--nats-url", url],
        env={"BENCH_MAP_ITEMS": str(items), "BENCH_WORKER_CONCURRENCY": "100"},
    )
    await asyncio.to_thread(worker.wait_for, " started: ", 60)
    run_id = f"map-{items}-{time.strftime('%H%M%S')}"
    async with Client(url, timeout=10) as client:
        await client.register(map_bench(args.concurrency))
        js = client.nc.jetstream()
        began = time.perf_counter()
        watch = HistoryWatch(began)
        sub = await js.subscribe(
            history_subject(run_id),
            stream=HISTORY_STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            cb=watch.on_record,
        )
        assert server.pid is not None
        meter = CpuMeter({"nats-server": server.pid, "engine": engine.pid, "worker": worker.pid})
        if profiler is not None:
            profiler.start(engine.pid)
        ticker = asyncio.create_task(report_progress(watch, engine))
        try:
            await client.start("map-bench", run_id=run_id)
            result["start_request_s"] = round(time.perf_counter() - began, 3)
            try:
                await asyncio.wait_for(watch.events["run_ended"].wait(), args.max_seconds)
            except TimeoutError:
                result["error"] = f"the run did not end within {args.max_seconds:g} s: {watch.progress()}"
                engine.check_alive()
                worker.check_alive()
            if "run_ended" in watch.seen and "map_completed" not in watch.seen:
                result["error"] = f"the run ended without a step.map.completed: {watch.progress()}"
        finally:
            ticker.cancel()
            result["cpu_percent"] = meter.read()
            if profiler is not None:
                result["profile"] = profiler.stop()
            await sub.unsubscribe()
        seen = watch.seen
        result["seconds"] = {name: round(seen[name], 3) for name in HistoryWatch.MARKS if name in seen}
        if "map_started" in seen and "map_completed" in seen:
            result["instances_per_s"] = round(items / (seen["map_completed"] - seen["map_started"]), 1)
            result["instances_per_s_from_start"] = round(items / seen["map_completed"], 1)
        result["engine_rss_mb"] = round(proc_status(engine.pid)["VmRSS"] / 1024, 1)
        result["engine_peak_rss_mb"] = round(proc_status(engine.pid)["VmHWM"] / 1024, 1)
        try:
            view = await client.status(run_id)
            result["status"] = view["status"]
            if view.get("error"):
                result["run_error"] = view["error"]
            result["output"] = await client.output(run_id)
        except Exception as err:  # noqa: BLE001 - reported, and the bench goes on to the history
            result["status_error"] = f"{type(err).__name__}: {err}"
        result["expected_output"] = items * (items + 1) // 2
    procs.stop(worker)
    return engine, run_id


async def measure_history(url: str, run_id: str, result: dict) -> None:
    """The run's stored history: records, bytes, and a pure decode + fold of it here."""
    async with Client(url, timeout=10) as client:
        js = client.nc.jetstream()
        info = await js.stream_info(HISTORY_STREAM, subjects_filter=history_subject(run_id))
        began = time.perf_counter()
        raw = [msg.data or b"" async for msg in stored_batches(js, HISTORY_STREAM, history_subject(run_id))]
        read_s = time.perf_counter() - began
        began = time.perf_counter()
        events = [event for data in raw for event in decode_record(data)]
        decode_s = time.perf_counter() - began
        began = time.perf_counter()
        run = replay(events)
        fold_s = time.perf_counter() - began
        snapshot = await snapshot_info(js, run_id)
    sizes = sorted(len(data) for data in raw)
    result.update(
        records=(info.state.subjects or {}).get(history_subject(run_id)),
        records_read=len(raw),
        bytes=sum(sizes),
        largest_record_bytes=sizes[-1] if sizes else 0,
        stream_bytes=info.state.bytes,
        events=len(events),
        read_s=round(read_s, 3),
        decode_s=round(decode_s, 3),
        fold_s=round(fold_s, 3),
        folded_status=str(run.status),
        folded_output=run.output,
        snapshot_after_run=snapshot,
    )


async def snapshot_info(js, run_id: str) -> dict:
    """Whether the run has a snapshot in the workflow_runs KV, its size and the sequence it holds."""
    kv = await HistoryStore(js).runs_kv()
    try:
        entry = await kv.get(snapshot_key(run_id))
    except (KeyNotFoundError, NotFoundError):
        return {"exists": False}
    _, last_seq = await HistoryStore(js).load_snapshot(run_id)
    return {"exists": True, "bytes": len(entry.value or b""), "last_seq": last_seq}


async def time_readable(url: str, run_id: str) -> dict:
    """How long until Client.status(run) answers, and what it said; then one more call."""
    began, attempts, errors = time.perf_counter(), 0, []
    async with Client(url, timeout=READABLE_SECONDS) as client:
        while True:
            attempts += 1
            try:
                view = await client.status(run_id)
                break
            except Exception as err:  # noqa: BLE001 - counted; the next attempt may work
                errors.append(f"{type(err).__name__}: {err}")
                if time.perf_counter() - began > READABLE_SECONDS:
                    return {"readable": False, "attempts": attempts, "errors": errors[:3]}
                await asyncio.sleep(0.05)
        first = time.perf_counter() - began
        again = time.perf_counter()
        await client.status(run_id)
        second = time.perf_counter() - again
    return {
        "readable": True,
        "status": view["status"],
        "first_status_s": round(first, 3),
        "second_status_s": round(second, 3),
        "attempts": attempts,
        "errors": errors[:3],
    }


async def restart(procs: Processes, url: str, engine: Child, run_id: str, name: str, drop_snapshot: bool) -> dict:
    """SIGKILL the engine, (drop the run's snapshot,) start it again, time the first status."""
    kill(procs, engine)
    if drop_snapshot:
        async with Client(url, timeout=10) as client:
            kv = await HistoryStore(client.nc.jetstream()).runs_kv()
            await kv.delete(snapshot_key(run_id))
    new_engine, ready_s = await asyncio.to_thread(start_engine, procs, url, name)
    readable = await time_readable(url, run_id)
    return {"snapshot_dropped": drop_snapshot, "engine_ready_s": round(ready_s, 3), **readable, "_engine": new_engine}


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict, stamp: str) -> None:
    server = procs.server("map", sync_always=True)
    results["map"] = mapped = {"items": args.items, "concurrency": args.concurrency}
    profiler = Profiler(RESULTS / f"profile-map-{stamp}") if args.profile else None
    print(f"bench: a map of {args.items} elements ...", file=sys.stderr, flush=True)
    engine, run_id = await run_map(procs, server, args, profiler, mapped)
    if "error" in mapped:
        results["errors"].append(f"map: {mapped['error']}")
    mapped["run_id"] = run_id
    print("bench: reading the history ...", file=sys.stderr, flush=True)
    results["history"] = history = {}
    await measure_history(server.url, run_id, history)
    results["restarts"] = []
    for name, drop in (("engine-restarted", False), ("engine-restarted-no-snapshot", True)):
        print(f"bench: SIGKILL the engine, start it again (snapshot dropped: {drop}) ...", file=sys.stderr, flush=True)
        outcome = await restart(procs, server.url, engine, run_id, name, drop)
        engine = outcome.pop("_engine")
        results["restarts"].append(outcome)
        if not outcome["readable"]:
            results["errors"].append(f"{name}: the run's state was not readable: {outcome['errors']}")
    procs.stop(engine)
    procs.stop(server)


# ---- the report ---------------------------------------------------------------------------------


def render(results: dict) -> str:
    m, mapped, history = results.get("machine", {}), results.get("map", {}), results.get("history", {})
    seconds = mapped.get("seconds", {})
    in_flight = f"concurrency {mapped.get('concurrency')}" if mapped.get("concurrency") else "all in flight"
    out = [f"dagnats map benchmark: list -> each (map of {mapped.get('items')}, {in_flight}) -> sum, one run", ""]
    out += _table(
        ["machine", ""],
        [
            ["date", m.get("date", "?")],
            ["cores / cpu", f"{m.get('cores')} / {m.get('cpu', '?')}"],
            ["python / nats-server", f"{m.get('python')} / {m.get('nats_server', '?')}"],
            ["dagnats commit", m.get("dagnats_commit", "?")],
            ["load average (start -> end)", f"{m.get('load_average_at_start')} -> {m.get('load_average_at_end')}"],
            ["server sync", "sync_interval: always (fsync every write)"],
        ],
        set(),
    )
    out.append("")
    correct = mapped.get("output") == mapped.get("expected_output")
    cpu = ", ".join(f"{k} {v:g}%" for k, v in mapped.get("cpu_percent", {}).items())
    rss = f"{_num(mapped.get('engine_rss_mb'))} MB ({_num(mapped.get('engine_peak_rss_mb'))} MB)"
    rows = [
        ["start request answered", f"{_num(mapped.get('start_request_s'), 3)} s"],
        ["start -> step.map.started", f"{_num(seconds.get('map_started'), 2)} s"],
        ["start -> step.map.completed", f"{_num(seconds.get('map_completed'), 2)} s"],
        ["start -> run ended", f"{_num(seconds.get('run_ended'), 2)} s"],
        ["map instances/s (map started -> completed)", _num(mapped.get("instances_per_s"))],
        ["map instances/s (start -> map completed)", _num(mapped.get("instances_per_s_from_start"))],
        [
            "run status / output",
            f"{mapped.get('status', mapped.get('status_error', '?'))} / {mapped.get('output')} "
            f"({'correct' if correct else 'expected ' + str(mapped.get('expected_output'))})",
        ],
        *([["run error", mapped["run_error"]]] if mapped.get("run_error") else []),
        ["CPU while it ran (100% = one core)", cpu],
        ["engine RSS after the run (peak)", rss],
    ]
    out += _table(["the run", ""], rows, set()) + [""]
    rows = [
        ["history records (stream_info subjects)", str(history.get("records"))],
        ["history events", str(history.get("events"))],
        ["history bytes (record payloads)", f"{history.get('bytes', 0):,} ({history.get('bytes', 0) / 1e6:.1f} MB)"],
        ["largest record", f"{history.get('largest_record_bytes', 0):,} bytes"],
        ["stream bytes (with headers and subjects)", f"{history.get('stream_bytes', 0):,}"],
        ["read (batched direct get), in the bench", f"{_num(history.get('read_s'), 3)} s"],
        ["decode records, in the bench", f"{_num(history.get('decode_s'), 3)} s"],
        ["pure fold (replay), in the bench", f"{_num(history.get('fold_s'), 3)} s"],
        ["folded status", str(history.get("folded_status"))],
        ["snapshot in KV after the run", json.dumps(history.get("snapshot_after_run"))],
    ]
    out += _table(["the run's history", ""], rows, set()) + [""]
    rows = [
        [
            "SIGKILL, restart" + (", snapshot deleted" if r["snapshot_dropped"] else ""),
            f"{_num(r['engine_ready_s'], 2)} s",
            f"{_num(r.get('first_status_s'), 3)} s" if r["readable"] else "NOT READABLE",
            f"{_num(r.get('second_status_s'), 3)} s",
            str(r.get("status", "-")),
            str(r["attempts"]),
        ]
        for r in results.get("restarts", [])
    ]
    if rows:
        out += _table(
            ["engine restart", "to ready", "first status", "next status", "status", "attempts"], rows, {1, 2, 3, 5}
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "items": args.items,
        "concurrency": args.concurrency,
        "worker_max_concurrent": 100,
        "max_seconds": args.max_seconds,
    }

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results, stamp)

    return run_session("map-{stamp}", settings, phases, render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
