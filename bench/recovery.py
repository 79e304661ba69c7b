"""Benchmark: kill -9 the engine with 1,000 runs of the 3-step chain in flight, start it again.

    python bench/recovery.py [--runs N] [--kill-after S] [--out FILE] [--keep]

Issue 10: "kill -9 the engine with 1,000 runs in flight; time until all are progressing
again (goal < 5 s) and until all complete", and lose none. Theory of operation. A fresh
nats-server (``sync_interval: always``), one ``dagnats serve --external`` engine, the
3-step no-op chain of run.py (``a -> b -> c``, bench/noop_worker.py):

1. ``--runs`` runs are started with no worker running (at most 100 start requests at a
   time), and the bench waits until each has its first ``step.queued`` in its history.
2. The worker starts; ``--kill-after`` seconds after it said it started (the runs are
   then spread over steps a, b and c, some done), the engine is killed with SIGKILL.
   The worker keeps running. At the kill the bench notes the runs not yet completed
   (in flight) and how many steps each had completed, as seen in the history.
3. The same command starts a new engine at once. Timed from the kill: the new engine
   ready, owning its first and every partition (it must wait for the dead engine's
   heartbeat to lapse, ``LEASE_TTL``), the first new history record of a run in flight,
   every run in flight with a new record ("progressing again"), and every run completed.
4. Every run's history is read back: exactly one ``workflow.completed`` and one
   ``step.completed`` per step, none lost and no committed transition duplicated.

Progress is seen by one ordered push consumer on ``history.>`` (bench/watch.py); a run
progresses with its first record that the server stored at least ``SPAWN_GUARD`` after
the new engine was spawned (the dead engine's last writes can be stored a few ms after
the kill; the new one cannot write that soon); where a run stood at the kill is read
from its records' store times.
Prints a table and writes bench/results/recovery-<timestamp>.json (+ .txt), and --out.
Every process it starts is stopped by PID on exit, error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import CHAIN3  # noqa: E402
from bench.map import kill, start_engine  # noqa: E402
from bench.procs import Child, Processes, proc_status  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402
from bench.takeover import _heartbeat_of, serve_argv, worker  # noqa: E402
from bench.watch import COMPLETED, FAILED, RunsWatch  # noqa: E402
from dagnats.domain.events import STEP_COMPLETED, WORKFLOW_COMPLETED  # noqa: E402
from dagnats.infra.client import Client  # noqa: E402
from dagnats.infra.engine.history import HistoryStore  # noqa: E402
from dagnats.infra.engine.leases import owners  # noqa: E402
from dagnats.infra.engine.streams import ensure_resources  # noqa: E402

RUNS, STARTS_AT_ONCE, KILL_AFTER = 1_000, 100, 1.0
QUEUED_TIMEOUT, RESUME_TIMEOUT = 120.0, 300.0
PROGRESS_GOAL_S = 5.0
SPAWN_GUARD = 0.25  # s after the spawn before a record counts as the new engine's
QUEUED = b'"type":"step.queued"'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dagnats benchmark: kill -9 with runs in flight, restart")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs started before the kill ({RUNS:,})")
    parser.add_argument(
        "--kill-after", type=float, default=KILL_AFTER, help=f"s after the worker started ({KILL_AFTER:g})"
    )
    session_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.kill_after < 0:
        parser.error("--runs must be 1 or more, --kill-after 0 or more")
    return args


async def start_runs(client: Client, run_ids: list[str]) -> dict:
    gate = asyncio.Semaphore(STARTS_AT_ONCE)

    async def start(run_id: str) -> None:
        async with gate:
            await client.start(CHAIN3["name"], {"n": run_id}, run_id=run_id)

    began = time.perf_counter()
    await asyncio.gather(*(start(run_id) for run_id in run_ids))
    return {"start_requests_s": round(time.perf_counter() - began, 2)}


async def watch_owners(js, engine: Child, partitions: int, killed: float, out: dict) -> None:
    """Kill -> the new engine owns its first, then every partition (polled every 50 ms)."""
    engine_id = await _heartbeat_of(js, engine)
    while time.perf_counter() - killed < RESUME_TIMEOUT:
        held = [p for p, owner in (await owners(js)).items() if owner == engine_id]
        if held and "kill_to_owns_first_s" not in out:
            out["kill_to_owns_first_s"] = round(time.perf_counter() - killed, 3)
        if len(held) == partitions:
            out["kill_to_owns_all_s"] = round(time.perf_counter() - killed, 3)
            return
        await asyncio.sleep(0.05)


async def verify(js, run_ids: list[str]) -> dict:
    """Each run's history: one workflow.completed, one step.completed per step."""
    store = HistoryStore(js)
    steps = {step["id"] for step in CHAIN3["steps"]}
    not_completed, duplicated = [], []
    for run_id in run_ids:
        types = Counter()
        for _, event in await store.events(run_id):
            types[(event.type, event.step_id if event.type == STEP_COMPLETED else "")] += 1
        if types[(WORKFLOW_COMPLETED, "")] != 1 or any(types[(STEP_COMPLETED, s)] == 0 for s in steps):
            not_completed.append(run_id)
        if types[(WORKFLOW_COMPLETED, "")] > 1 or any(types[(STEP_COMPLETED, s)] > 1 for s in steps):
            duplicated.append(run_id)
    return {
        "runs_read": len(run_ids),
        "completed": len(run_ids) - len(not_completed),
        "not_completed": not_completed[:10],
        "lost": len(not_completed),
        "duplicated": len(duplicated),
        "first_duplicated": duplicated[:10],
    }


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("recovery", sync_always=True)
    url = server.url
    engine, _ = await asyncio.to_thread(start_engine, procs, url, "engine-a")
    async with Client(url, timeout=30) as client:
        js = client.nc.jetstream()
        partitions = await ensure_resources(js)
        await client.register(CHAIN3)
        watch = await RunsWatch("rec-", {"queued": QUEUED, "completed": COMPLETED, "failed": FAILED}).subscribe(js)
        run_ids = [f"rec-{n:05d}" for n in range(args.runs)]
        say(f"starting {args.runs:,} runs with no worker ...")
        results["start"] = start = await start_runs(client, run_ids)
        if not await watch.wait_count("queued", args.runs, QUEUED_TIMEOUT, engine.check_alive):
            raise RuntimeError(f"only {watch.count('queued')} of {args.runs} runs queued their first step")
        start["rss_mb_before_kill"] = round(proc_status(engine.pid)["VmRSS"] / 1024, 1)
        work = worker(procs, url)
        await asyncio.to_thread(work.wait_for, " started: ", 60)
        await asyncio.sleep(args.kill_after)
        say("SIGKILL the engine, start it again ...")
        kill(procs, engine)
        killed, killed_wall = time.perf_counter(), time.time()
        spawned_after = time.perf_counter() - killed
        new = procs.child("engine-b", serve_argv(url))
        # Progress: a record the server stored from SPAWN_GUARD after the new engine's spawn
        # (it cannot append sooner: the interpreter alone takes longer to start; the dead
        # engine's last writes may still be stored a few ms after its kill).
        watch.since = time.time() + SPAWN_GUARD  # the server stamps records with this machine's clock
        outcome: dict = {"kill_to_spawn_s": round(spawned_after, 3)}
        owning = asyncio.create_task(watch_owners(js, new, partitions, killed, outcome))
        await asyncio.to_thread(new.wait_for, "engine ready", 60)
        outcome["kill_to_ready_s"] = round(time.perf_counter() - killed, 3)
        ok = await watch.wait_count("completed", args.runs, RESUME_TIMEOUT, new.check_alive)
        await owning
        # Where each run stood when it was killed, by the server's store times of its records.
        standing = {r: watch.at(r, killed_wall) for r in run_ids}
        in_flight = [r for r in run_ids if not standing[r][1]]
        spread = Counter(min(standing[r][0], 3) for r in in_flight)
        outcome["in_flight_at_kill"] = len(in_flight)
        outcome["completed_at_kill"] = args.runs - len(in_flight)
        outcome["steps_done_at_kill"] = {str(k): spread[k] for k in sorted(spread)}
        outcome["records_stored_after_kill_before_guard"] = sum(
            1 for r in run_ids for stamp, _, _ in watch.log.get(r, []) if killed_wall <= stamp < watch.since
        )
        pending = [r for r in in_flight if r not in watch.seen["completed"]]
        if in_flight and all(r in watch.first_after for r in in_flight):
            outcome["kill_to_all_progressing_s"] = round(max(watch.first_after[r] for r in in_flight) - killed, 3)
        firsts = sorted(watch.first_after[r] for r in in_flight if r in watch.first_after)
        if firsts:
            outcome["kill_to_first_progress_s"] = round(firsts[0] - killed, 3)
            outcome["progressing_p50_s"] = round(firsts[len(firsts) // 2] - killed, 3)
        done = [watch.seen["completed"][r] for r in in_flight if r in watch.seen["completed"]]
        outcome["in_flight_completed"] = len(done)
        if done and not pending:
            outcome["kill_to_all_completed_s"] = round(max(done) - killed, 3)
        if not ok or pending:
            results["errors"].append(f"{len(pending)} runs in flight not completed {RESUME_TIMEOUT:g} s after the kill")
        outcome["failed_runs"] = watch.count("failed")
        log = new.log_path.read_text(errors="replace")
        outcome["took_over_partitions"] = log.count("took over partition")
        outcome["rss_mb_after"] = round(proc_status(new.pid)["VmRSS"] / 1024, 1)
        results["recovery"] = outcome
        await watch.unsubscribe()
        say("reading every run's history back ...")
        results["verify"] = checked = await verify(js, run_ids)
        if checked["lost"] or checked["duplicated"]:
            results["errors"].append(
                f"{checked['lost']} runs lost, {checked['duplicated']} with duplicated transitions"
            )
    results["partitions"] = partitions
    procs.stop(work)
    procs.stop(new)
    procs.stop(server)


def assess(results: dict) -> None:
    r = results.get("recovery", {})
    progressing = r.get("kill_to_all_progressing_s")
    results["goal"] = {
        "all_progressing_s": progressing,
        "met": progressing is not None and progressing < PROGRESS_GOAL_S,
    }


def render(results: dict) -> str:
    s, r, v = results.get("settings", {}), results.get("recovery", {}), results.get("verify", {})
    out = [
        f"dagnats recovery benchmark: kill -9 with {s.get('runs'):,} runs of the 3-step chain started, "
        f"{results.get('partitions')} partitions",
        "",
    ]
    out += machine_rows(results) + [""]
    goal = results.get("goal", {})
    met = "met" if goal.get("met") else "MISSED"
    rows = [
        ["start requests (no worker yet)", f"{results.get('start', {}).get('start_requests_s')} s"],
        ["worker started -> SIGKILL", f"{s.get('kill_after')} s"],
        [
            "at the kill: in flight / completed",
            f"{r.get('in_flight_at_kill')} / {r.get('completed_at_kill')} "
            f"(in flight by steps completed: {r.get('steps_done_at_kill')})",
        ],
        ["kill -> new engine ready", f"{_num(r.get('kill_to_ready_s'), 2)} s"],
        ["records stored after the kill, before the guard", str(r.get("records_stored_after_kill_before_guard"))],
        ["kill -> it owns its first partition", f"{_num(r.get('kill_to_owns_first_s'), 2)} s"],
        ["kill -> it owns every partition", f"{_num(r.get('kill_to_owns_all_s'), 2)} s"],
        ["kill -> first run in flight progressing", f"{_num(r.get('kill_to_first_progress_s'), 2)} s"],
        ["kill -> half of them progressing", f"{_num(r.get('progressing_p50_s'), 2)} s"],
        [
            f"kill -> every run in flight progressing (goal < {PROGRESS_GOAL_S:g} s)",
            f"{_num(r.get('kill_to_all_progressing_s'), 2)} s: {met}",
        ],
        [
            "kill -> every run in flight completed",
            f"{_num(r.get('kill_to_all_completed_s'), 2)} s "
            f"({r.get('in_flight_completed')} of {r.get('in_flight_at_kill')})",
        ],
        ["partitions taken over (its log)", str(r.get("took_over_partitions"))],
        ["engine RSS after", f"{_num(r.get('rss_mb_after'))} MB"],
        [
            "histories read back: completed / lost / duplicated",
            f"{v.get('completed')} of {v.get('runs_read')} / {v.get('lost')} / {v.get('duplicated')}",
        ],
        ["runs failed", str(r.get("failed_runs"))],
    ]
    out += _table(["recovery", ""], rows, set())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"runs": args.runs, "kill_after": args.kill_after, "worker_max_concurrent": 100}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("recovery-{stamp}", settings, phases, render, keep=args.keep, out=args.out, assess=assess)


if __name__ == "__main__":
    sys.exit(main())
