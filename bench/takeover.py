"""Benchmark: an engine killed with 1,000 runs in flight among 100,000 finished ones, and another taking over.

    python bench/takeover.py [--finished N] [--in-flight N] [--quick] [--starts K] [--out FILE] [--keep]

Issue 9: startup and takeover cost must not grow with the number of finished
runs. Theory of operation. One nats-server (``sync_interval: always``, its own
data directory), the engine's streams and buckets made by ``ensure_resources``,
every engine a ``dagnats serve --external`` process of its own:

1. empty: an engine is started and stopped (SIGTERM) ``--starts`` times; each
   time, from the process start to its "engine ready" line.
2. template: one real run of the one-step workflow ``tko-one`` (task
   ``noop_a``, bench/noop_worker.py) goes through an engine; its history
   records (with their ``Nats-Msg-Id``) and its snapshot are read back.
3. finished: ``--finished`` copies of that run are written straight to the
   server, the template's run id replaced by ``done-<n>`` in every record,
   message id and snapshot: ``history.<run>`` records and the ``run.<run>`` key
   of ``workflow_runs``, as a run that started and ended leaves them (its open
   snapshot, ``open.<partition>.<run>``, was purged when it ended and leaves
   nothing behind; pipelined async publishes, 4,000 in flight). Driving them through an
   engine would cost ~250 runs/s on this machine: 400 s per 100,000.
4. starts again: as 1, now with the finished runs present. The bench also
   times the listing a new owner makes (``HistoryStore.open_runs`` of every
   partition) and, for comparison, the old start path (every snapshot of
   ``workflow_runs``, ``HistoryStore.snapshots``).
5. in flight: engine A starts; ``--in-flight`` runs of ``tko-one`` are started
   with no worker running, so each waits on its queued task; the bench waits
   until every one has its open snapshot and its task queued on ``TASK_QUEUES``.
6. takeover: an ordered push consumer on ``history.>`` (deliver new) watches
   the in-flight runs. Engine B starts; the moment its heartbeat is in the
   ``engines`` bucket (before it can be handed anything), A is killed with
   SIGKILL and the worker started. Timed from the kill: B owning every
   partition (``partition_owners``, polled every 50 ms), the first new
   history record of an in-flight run, and every one of them completed.
   B's log gives its partitions taken over and the runs it brought up.

Prints tables and writes bench/results/<timestamp>-takeover.json (+ .txt), and
--out. Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import nats
from nats.js import api

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.map import kill, start_engine  # noqa: E402
from bench.procs import PYTHON, REPO, Child, Processes, proc_status  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import run_session, session_options  # noqa: E402
from dagnats.domain.events import WORKFLOW_COMPLETED, decode_record  # noqa: E402
from dagnats.infra.client import Client  # noqa: E402
from dagnats.infra.engine.history import HistoryStore, snapshot_key  # noqa: E402
from dagnats.infra.engine.leases import heartbeats, owners  # noqa: E402
from dagnats.infra.engine.streams import ensure_resources  # noqa: E402
from dagnats.infra.wire.headers import MSG_ID  # noqa: E402
from dagnats.infra.wire.names import HISTORY_STREAM, RUNS_BUCKET, TASK_STREAM  # noqa: E402
from dagnats.infra.wire.reading import stored_batches  # noqa: E402
from dagnats.infra.wire.subjects import history_subject  # noqa: E402

RESULTS = REPO / "bench" / "results"
ONE_STEP = {"name": "tko-one", "steps": [{"id": "a", "task": "noop_a"}]}
TEMPLATE = "tko-template-run"
FINISHED, QUICK_FINISHED, IN_FLIGHT = 100_000, 10_000, 1_000
PENDING_PUBLISHES, STARTS_AT_ONCE = 4_000, 50
RESUME_SECONDS = 300.0  # after the kill, every in-flight run must complete within this long
RECOVERING = re.compile(r"partition (\d+): recovering (\d+) unfinished runs")
TOOK_OVER = re.compile(r"took over partition (\d+) from")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: takeover among many finished runs")
    parser.add_argument("--finished", type=int, help=f"finished runs written first (default {FINISHED:,})")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help=f"runs in flight at the kill ({IN_FLIGHT})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FINISHED:,} finished runs")
    parser.add_argument("--starts", type=int, default=3, help="engine starts timed with and without them (3)")
    session_options(parser)
    args = parser.parse_args(argv)
    if args.finished is None:
        args.finished = QUICK_FINISHED if args.quick else FINISHED
    if args.finished < 0 or args.in_flight < 1 or args.starts < 1:
        parser.error("--finished must be 0 or more, --in-flight and --starts 1 or more")
    return args


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def serve_argv(url: str) -> list[str]:
    return [PYTHON, "-m", "dagnats.infra.cli", "serve", "--external", "--nats-url", url]


def worker(procs: Processes, url: str) -> Child:
    file = str(REPO / "bench" / "noop_worker.py")
    return procs.child("worker", [PYTHON, "-m", "dagnats.infra.cli", "worker", file, "--nats-url", url])


# ---- phases 1 and 4: engine starts ------------------------------------------------------------


async def time_starts(procs: Processes, url: str, count: int, label: str) -> dict:
    """Start and stop an engine ``count`` times; each time from process start to "engine ready"."""
    ready, rss = [], []
    for n in range(count):
        engine, seconds = await asyncio.to_thread(start_engine, procs, url, f"engine-{label}-{n}")
        ready.append(round(seconds, 3))
        rss.append(round(proc_status(engine.pid)["VmRSS"] / 1024, 1))
        await asyncio.to_thread(procs.stop, engine)
    return {"ready_s": ready, "median_ready_s": round(statistics.median(ready), 3), "rss_mb_at_ready": rss}


async def listing_costs(url: str, partitions: int) -> dict:
    """What a new owner lists (the open snapshots of every partition) against the old path (every snapshot)."""
    async with Client(url, timeout=60) as client:
        js = client.nc.jetstream()
        began = time.perf_counter()
        store = HistoryStore(js, partitions=partitions)
        listed = [run for p in range(partitions) for run in await store.open_runs(p)]
        open_s = time.perf_counter() - began
        began = time.perf_counter()
        snapshots = await HistoryStore(js).snapshots()
        snapshots_s = time.perf_counter() - began
    return {
        "open_runs_listed": len(listed),
        "open_runs_list_s": round(open_s, 4),
        "snapshots_read": len(snapshots),
        "snapshots_read_s": round(snapshots_s, 3),
    }


# ---- phases 2 and 3: a template run and its copies --------------------------------------------


async def template_run(procs: Processes, url: str) -> dict:
    """One real run of tko-one through an engine: its history records and snapshot."""
    engine, _ = await asyncio.to_thread(start_engine, procs, url, "engine-template")
    work = worker(procs, url)
    await asyncio.to_thread(work.wait_for, " started: ", 60)
    async with Client(url, timeout=30) as client:
        await client.register(ONE_STEP)
        await client.start("tko-one", run_id=TEMPLATE)
        view = await client.wait(TEMPLATE, timeout=60)
        await asyncio.sleep(1.0)  # the snapshot of a run that ended is written as it passivates
        js = client.nc.jetstream()
        records = [
            (msg.data or b"", (msg.headers or {}).get(MSG_ID, ""))
            async for msg in stored_batches(js, HISTORY_STREAM, history_subject(TEMPLATE))
        ]
        snapshot = (await (await HistoryStore(js).runs_kv()).get(snapshot_key(TEMPLATE))).value or b""
    await asyncio.to_thread(procs.stop, work)
    await asyncio.to_thread(procs.stop, engine)
    events = [event.type for data, _ in records for event in decode_record(data)]
    return {"status": view["status"], "records": records, "snapshot": snapshot, "events": events}


async def write_finished(url: str, template: dict, count: int, partitions: int) -> dict:
    """``count`` copies of the template run, written as a finished run leaves them."""
    tid = TEMPLATE.encode()
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=PENDING_PUBLISHES)
    began = time.perf_counter()
    acks: list[asyncio.Future] = []
    writes = 0
    for n in range(count):
        run_id = f"done-{n:06d}"
        rid = run_id.encode()
        for data, msg_id in template["records"]:
            headers = {MSG_ID: msg_id.replace(TEMPLATE, run_id)} if msg_id else None
            acks.append(await js.publish_async(history_subject(run_id), data.replace(tid, rid), headers=headers))
        snapshot = template["snapshot"].replace(tid, rid)
        acks.append(await js.publish_async(f"$KV.{RUNS_BUCKET}.{snapshot_key(run_id)}", snapshot))
        if len(acks) >= 10 * PENDING_PUBLISHES or n == count - 1:
            writes += await _settled(acks)
            acks = []
        if n and n % 10_000 == 0:
            say(f"  {n:,} finished runs written ({time.perf_counter() - began:.0f} s)")
    publish_s = time.perf_counter() - began
    streams = {}
    for name in (HISTORY_STREAM, f"KV_{RUNS_BUCKET}"):
        state = (await js.stream_info(name)).state
        streams[name] = {"messages": state.messages, "bytes": state.bytes, "last_seq": state.last_seq}
    await nc.close()
    return {
        "runs": count,
        "records_per_run": len(template["records"]),
        "snapshot_bytes": len(template["snapshot"]),
        "writes": writes,
        "publish_s": round(publish_s, 1),
        "writes_per_s": round(writes / publish_s, 1) if publish_s else None,
        "streams_after": streams,
    }


async def _settled(acks: list[asyncio.Future]) -> int:
    for ack in acks:
        await ack  # raises the first failed publish
    return len(acks)


# ---- phase 5: runs in flight on engine A ------------------------------------------------------


async def start_in_flight(procs: Processes, url: str, count: int) -> tuple[Child, list[str], dict]:
    """Engine A and ``count`` runs of tko-one waiting on their queued task (no worker)."""
    engine, _ = await asyncio.to_thread(start_engine, procs, url, "engine-a")
    run_ids = [f"live-{n:05d}" for n in range(count)]
    gate = asyncio.Semaphore(STARTS_AT_ONCE)
    async with Client(url, timeout=30) as client:

        async def start(run_id: str) -> None:
            async with gate:
                await client.start("tko-one", run_id=run_id)

        began = time.perf_counter()
        await asyncio.gather(*(start(run_id) for run_id in run_ids))
        started_s = time.perf_counter() - began
        js = client.nc.jetstream()
        deadline = time.monotonic() + 120
        store = HistoryStore(js, partitions=await ensure_resources(js))
        while True:
            indexed = sum([len(await store.open_runs(p)) for p in range(store.partitions or 0)])
            queued = (await js.stream_info(TASK_STREAM)).state.messages
            if indexed >= count and queued >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"after 120 s: {indexed} runs indexed, {queued} tasks queued of {count}")
            engine.check_alive()
            await asyncio.sleep(0.2)
        settled_s = time.perf_counter() - began
    status = proc_status(engine.pid)
    return (
        engine,
        run_ids,
        {
            "runs": count,
            "start_requests_s": round(started_s, 2),
            "indexed_and_queued_s": round(settled_s, 2),
            "indexed": indexed,
            "tasks_queued": queued,
            "engine_a_rss_mb": round(status["VmRSS"] / 1024, 1),
        },
    )


# ---- phase 6: the takeover --------------------------------------------------------------------


class InFlightWatch:
    """The history records of the in-flight runs, as the server pushes them (deliver new)."""

    def __init__(self, run_ids: list[str]) -> None:
        self.waiting = set(run_ids)
        self.total = len(run_ids)
        self.first: tuple[float, str, list[str]] | None = None
        self.completed_at: list[float] = []
        self.all_done = asyncio.Event()

    async def on_record(self, msg) -> None:
        run_id = msg.subject.split(".", 1)[1]
        if not run_id.startswith("live-"):
            return
        now = time.perf_counter()
        types = [event.type for event in decode_record(msg.data)]
        if self.first is None:
            self.first = (now, run_id, types)
        if WORKFLOW_COMPLETED in types and run_id in self.waiting:
            self.waiting.discard(run_id)
            self.completed_at.append(now)
            if not self.waiting:
                self.all_done.set()


async def takeover(procs: Processes, url: str, engine_a: Child, run_ids: list[str], partitions: int) -> dict:
    async with Client(url, timeout=30) as client:
        js = client.nc.jetstream()
        watch = InFlightWatch(run_ids)
        sub = await js.subscribe(
            "history.>",
            stream=HISTORY_STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=watch.on_record,
        )
        b_began = time.perf_counter()
        engine_b = procs.child("engine-b", serve_argv(url))
        b_ready = asyncio.create_task(_ready_at(engine_b))
        b_id = await _heartbeat_of(js, engine_b)
        owned_by_a = await owners(js)
        killed = time.perf_counter()
        await asyncio.to_thread(kill, procs, engine_a)
        work = worker(procs, url)
        result: dict = {
            "engine_b_heartbeat_after_s": round(killed - b_began, 3),
            "partitions_owned_by_a_at_kill": sum(1 for owner in owned_by_a.values() if owner != b_id),
        }
        while True:
            now_owned = await owners(js)
            if "kill_to_b_owns_first_s" not in result and b_id in now_owned.values():
                result["kill_to_b_owns_first_s"] = round(time.perf_counter() - killed, 3)
            if len(now_owned) == partitions and all(owner == b_id for owner in now_owned.values()):
                result["kill_to_b_owns_all_s"] = round(time.perf_counter() - killed, 3)
                break
            if time.perf_counter() - killed > RESUME_SECONDS:
                result["error"] = f"B owned {sum(o == b_id for o in now_owned.values())} partitions"
                break
            engine_b.check_alive()
            await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(watch.all_done.wait(), RESUME_SECONDS - (time.perf_counter() - killed))
        except TimeoutError:
            result["error"] = f"{len(watch.waiting)} of {watch.total} runs not completed {RESUME_SECONDS:g} s after"
        await sub.unsubscribe()
        result["engine_b_ready_s"] = round(await b_ready - b_began, 3)
        if watch.first is not None:
            at, run_id, types = watch.first
            result.update(kill_to_first_event_s=round(at - killed, 3), first_event=f"{run_id}: {', '.join(types)}")
        done = sorted(watch.completed_at)
        result["completed"] = len(done)
        if done:
            result["kill_to_first_completed_s"] = round(done[0] - killed, 3)
            result["kill_to_all_completed_s"] = round(done[-1] - killed, 3) if not watch.waiting else None
            result["first_to_last_completed_s"] = round(done[-1] - done[0], 3)
        await asyncio.sleep(2.0)  # the last runs passivate
        status = proc_status(engine_b.pid)
        result["engine_b_rss_mb"] = round(status["VmRSS"] / 1024, 1)
        result["engine_b_peak_rss_mb"] = round(status["VmHWM"] / 1024, 1)
        result["worker_started_after_kill"] = True
    result["run_list"] = await time_run_list(url)
    log = engine_b.log_path.read_text(errors="replace")
    recovering = {int(p): int(k) for p, k in RECOVERING.findall(log)}
    result["b_recovered_runs"] = sum(recovering.values())
    result["b_recovering_by_partition"] = dict(sorted(recovering.items()))
    result["b_took_over_partitions"] = len(TOOK_OVER.findall(log))
    await asyncio.to_thread(procs.stop, work)
    await asyncio.to_thread(procs.stop, engine_b)
    return result


async def time_run_list(url: str) -> dict:
    """``dagnats run list`` (its first 10 runs) from engine B: a request, not a start, but it
    reads every snapshot."""
    async with Client(url, timeout=120) as client:
        began = time.perf_counter()
        try:
            runs = await client.runs(limit=10)
        except Exception as err:  # noqa: BLE001 - reported
            return {"error": f"{type(err).__name__}: {err}", "after_s": round(time.perf_counter() - began, 2)}
        return {"runs": len(runs), "seconds": round(time.perf_counter() - began, 3)}


async def _ready_at(engine: Child) -> float:
    await asyncio.to_thread(engine.wait_for, "engine ready", 120)
    return time.perf_counter()


async def _heartbeat_of(js, engine: Child) -> str:
    """The engine id of ``engine``, once its first heartbeat is stored."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for beat in await heartbeats(js):
            if beat.pid == engine.pid:
                return beat.engine
        engine.check_alive()
        await asyncio.sleep(0.01)
    raise RuntimeError("engine B stored no heartbeat within 120 s")


# ---- all of it --------------------------------------------------------------------------------


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("takeover", sync_always=True)
    url = server.url
    async with Client(url, timeout=30) as client:
        partitions = await ensure_resources(client.nc.jetstream())
    results["partitions"] = partitions
    say(f"{args.starts} engine starts with no runs ...")
    results["starts_empty"] = await time_starts(procs, url, args.starts, "empty")
    say("one real run of tko-one, the template ...")
    template = await template_run(procs, url)
    results["template"] = {k: template[k] for k in ("status", "events")} | {"records": len(template["records"])}
    say(f"writing {args.finished:,} finished runs ...")
    results["finished"] = await write_finished(url, template, args.finished, partitions)
    say(f"{args.starts} engine starts with {args.finished:,} finished runs ...")
    results["starts_finished"] = await time_starts(procs, url, args.starts, "finished")
    results["listing_finished"] = await listing_costs(url, partitions)
    say(f"engine A and {args.in_flight:,} runs in flight ...")
    engine_a, run_ids, results["in_flight"] = await start_in_flight(procs, url, args.in_flight)
    results["listing_in_flight"] = await listing_costs(url, partitions)
    say("engine B, SIGKILL engine A, the worker ...")
    results["takeover"] = outcome = await takeover(procs, url, engine_a, run_ids, partitions)
    if "error" in outcome:
        results["errors"].append(f"takeover: {outcome['error']}")
    procs.stop(server)


def render(results: dict) -> str:
    m, s = results.get("machine", {}), results.get("settings", {})
    fin, fl, tk = results.get("finished", {}), results.get("in_flight", {}), results.get("takeover", {})
    out = [
        f"dagnats takeover benchmark: {s.get('in_flight'):,} runs in flight among {s.get('finished'):,} finished, "
        f"{results.get('partitions')} partitions",
        "",
    ]
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
    if fin:
        streams = fin.get("streams_after", {})
        rows = [
            ["how", "copies of one real run (its records, msg ids, finished snapshot), written directly"],
            ["records per run / snapshot bytes", f"{fin['records_per_run']} / {fin['snapshot_bytes']:,}"],
            ["writes / time / rate", f"{fin['writes']:,} / {fin['publish_s']:g} s / {_num(fin['writes_per_s'])}/s"],
            *[
                [f"{name} after", f"{v['messages']:,} msgs, {v['bytes'] / 1e6:.1f} MB, last seq {v['last_seq']:,}"]
                for name, v in streams.items()
            ],
        ]
        out += _table([f"{fin['runs']:,} finished runs", ""], rows, set()) + [""]
    rows = []
    for key, label in (("starts_empty", "no runs"), ("starts_finished", f"{s.get('finished'):,} finished runs")):
        data = results.get(key)
        if data:
            ready = ", ".join(f"{x:.2f}" for x in data["ready_s"])
            rows.append(
                [label, f"{data['median_ready_s']:.2f}", ready, ", ".join(f"{x:g}" for x in data["rss_mb_at_ready"])]
            )
    if "engine_b_ready_s" in tk:
        rows.append(
            [f"engine B (+{fl.get('runs', 0):,} in flight, owned by A)", f"{tk['engine_b_ready_s']:.2f}", "", ""]
        )
    if rows:
        out += _table(["engine start -> ready", "median s", "each s", "RSS MB at ready"], rows, {1}) + [""]
    rows = []
    for key, label in (("listing_finished", "finished only"), ("listing_in_flight", "and runs in flight")):
        data = results.get(key)
        if data:
            rows.append(
                [
                    label,
                    f"{data['open_runs_listed']:,} in {data['open_runs_list_s'] * 1000:.1f} ms",
                    f"{data['snapshots_read']:,} in {data['snapshots_read_s']:.2f} s",
                ]
            )
    if rows:
        out += _table(
            ["what a start lists, timed in the bench", "open snapshots, every partition", "old: every snapshot"],
            rows,
            set(),
        ) + [""]
    if tk:
        rows = [
            [
                "runs started on A (no worker) / indexed+queued",
                f"{fl.get('start_requests_s')} s / {fl.get('indexed_and_queued_s')} s",
            ],
            ["engine A RSS with them", f"{_num(fl.get('engine_a_rss_mb'))} MB"],
            ["B's heartbeat stored -> SIGKILL A", f"at {tk.get('engine_b_heartbeat_after_s')} s after B's start"],
            ["partitions A owned at the kill", str(tk.get("partitions_owned_by_a_at_kill"))],
            ["kill -> B owns its first partition", f"{_num(tk.get('kill_to_b_owns_first_s'), 2)} s"],
            ["kill -> B owns every partition", f"{_num(tk.get('kill_to_b_owns_all_s'), 2)} s"],
            [
                "kill -> first new history record",
                f"{_num(tk.get('kill_to_first_event_s'), 2)} s ({tk.get('first_event')})",
            ],
            ["kill -> first run completed", f"{_num(tk.get('kill_to_first_completed_s'), 2)} s"],
            [
                "kill -> all completed",
                f"{_num(tk.get('kill_to_all_completed_s'), 2)} s ({tk.get('completed')} of {fl.get('runs')})",
            ],
            [
                "B: partitions taken over / runs brought up",
                f"{tk.get('b_took_over_partitions')} / {tk.get('b_recovered_runs')}",
            ],
            ["run list (first 10) from B, after", _run_list(tk.get("run_list") or {})],
            ["B RSS after (peak)", f"{_num(tk.get('engine_b_rss_mb'))} MB ({_num(tk.get('engine_b_peak_rss_mb'))} MB)"],
        ]
        out += _table(["takeover (worker started at the kill)", ""], rows, set())
    return "\n".join(out)


def _run_list(data: dict) -> str:
    if "error" in data:
        return f"failed after {data['after_s']} s: {data['error']}"
    return f"{data.get('runs')} runs in {_num(data.get('seconds'), 2)} s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"finished": args.finished, "in_flight": args.in_flight, "starts": args.starts, "quick": args.quick}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("{stamp}-takeover", settings, phases, render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
