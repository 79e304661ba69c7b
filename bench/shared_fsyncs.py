"""Benchmark: fsynced writes per second into one stream, one ack each or shared in atomic batches.

    python bench/shared_fsyncs.py [--writers N] [--seconds S] [--rounds N] [--out FILE] [--keep]

Issue 10's "shared fsyncs" lever, measured before it is built. Theory of operation. A
fresh nats-server (``sync_interval: always``) and one stream ``H`` (``history.>``-like
subjects ``h.<writer>``, ``allow_atomic``). ``--writers`` concurrent writers, each
appending to its own subject with ``Nats-Expected-Last-Subject-Sequence`` (the fencing
every history append of the engine carries) and waiting for its write before the next,
as a run's actor does. For ``--seconds`` each, alternating ``--rounds`` times:

- ``one ack each``: every write is its own publish and PubAck (the engine today);
- ``atomic batches``: the writes waiting at one turn of the event loop go out as one
  ADR-50 atomic batch (``Nats-Batch-Id``/``-Sequence``, the last with
  ``Nats-Batch-Commit``), the commit's PubAck answering all of them.

Reports writes/s and this process's CPU per write; checks the stream holds exactly the
writes counted, and first that a stale fence on one write of a batch refuses all of it.
Prints a table and writes bench/results/shared-fsyncs-<timestamp>.json (+ .txt), and
--out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js import api

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Processes  # noqa: E402
from bench.report import _num, _table  # noqa: E402
from bench.session import machine_rows, run_session, say, session_options  # noqa: E402

BODY = b"x" * 300  # about a history record of a 3-step run
MAX_BATCH = 1_000  # the server's limit per atomic batch
MODES = {"single": "one ack each", "batched": "atomic batches"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=100, help="concurrent writers (default 100)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and mode (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    session_options(parser)
    return parser.parse_args(argv)


Append = Callable[[str, int], Awaitable[int]]  # (subject, its last sequence) -> the new one


async def writing(writers: int, stop: asyncio.Event, append: Append) -> int:
    """``writers`` writers, each appending to its own subject, one write at a time, until
    ``stop``; how many writes were stored."""
    written = 0

    async def writer(i: int) -> None:
        nonlocal written
        last = 0
        while not stop.is_set():
            last, written = await append(f"h.{i}", last), written + 1

    await asyncio.gather(*(writer(i) for i in range(writers)))
    return written


async def one_ack_each(nc: nats.NATS, writers: int, stop: asyncio.Event) -> int:
    js = nc.jetstream()

    async def append(subject: str, last: int) -> int:
        ack = await js.publish(subject, BODY, headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
        return ack.seq

    return await writing(writers, stop, append)


async def commit_batch(nc: nats.NATS, writes: list[tuple[str, int]]) -> dict:
    """Send ``writes`` (subject, the fence: its last sequence) as one atomic batch; the
    commit's answer (a PubAck for the whole batch, or its error)."""
    batch_id = secrets.token_hex(8)
    for n, (subject, last) in enumerate(writes, 1):
        headers = {
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": str(n),
            "Nats-Expected-Last-Subject-Sequence": str(last),
        }
        if n < len(writes):
            await nc.publish(subject, BODY, headers=headers)
        else:
            reply = await nc.request(subject, BODY, timeout=5, headers={**headers, "Nats-Batch-Commit": "1"})
            return json.loads(reply.data)
    return {}


async def fence_in_a_batch(url: str) -> dict:
    """What a stale fence on one write of a batch does: the whole batch refused, or not."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.add_stream(api.StreamConfig(name="FENCE", subjects=["f.>"], allow_atomic=True))
        first = await js.publish("f.a", BODY)
        good = await commit_batch(nc, [("f.a", first.seq), ("f.b", 0)])
        stale = await commit_batch(nc, [("f.a", first.seq), ("f.c", 0)])  # f.a moved on: stale
        stored = (await js.stream_info("FENCE")).state.messages
        return {"good_batch": good, "stale_fence_batch": stale, "stored_after": stored, "stored_expected": 3}
    finally:
        await nc.close()


async def atomic_batches(nc: nats.NATS, writers: int, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    waiting: list[tuple[str, int, asyncio.Future[int]]] = []
    ready = asyncio.Event()

    async def append(subject: str, last: int) -> int:
        stored: asyncio.Future[int] = loop.create_future()
        waiting.append((subject, last, stored))
        ready.set()
        return await stored

    async def send(batch: list[tuple[str, int, asyncio.Future[int]]]) -> None:
        answer = await commit_batch(nc, [(subject, last) for subject, last, _ in batch])
        if "error" in answer:
            raise RuntimeError(f"atomic batch of {len(batch)} refused: {answer['error']}")
        first = answer["seq"] - len(batch) + 1
        for n, (_, _, stored) in enumerate(batch):
            stored.set_result(first + n)

    async def sender() -> None:
        while not stop.is_set():
            await ready.wait()
            ready.clear()
            while waiting:
                batch, waiting[:] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                await send(batch)

    sending = asyncio.ensure_future(sender())
    writes = asyncio.ensure_future(writing(writers, stop, append))
    await stop.wait()
    ready.set()
    done, _ = await asyncio.wait([writes, sending], return_when=asyncio.FIRST_EXCEPTION, timeout=10)
    for task in (writes, sending):
        if task in done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if writes not in done:
        sending.cancel()
        writes.cancel()
        raise RuntimeError("the writers did not stop within 10 s")
    sending.cancel()
    return writes.result()


async def one_round(url: str, mode: str, args: argparse.Namespace) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        try:
            await js.delete_stream("H")
        except nats.js.errors.NotFoundError:
            pass
        await js.add_stream(api.StreamConfig(name="H", subjects=["h.>"], allow_atomic=True))
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(args.seconds, stop.set)
        cpu, began = time.process_time(), time.perf_counter()
        written = await (one_ack_each if mode == "single" else atomic_batches)(nc, args.writers, stop)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        stored = (await js.stream_info("H")).state.messages
        return {
            "mode": mode,
            "writes": written,
            "stored": stored,
            "writes_per_s": round(written / seconds, 1),
            "client_cpu_us_per_write": round(1e6 * cpu / max(written, 1), 1),
        }
    finally:
        await nc.close()


async def run_phases(args: argparse.Namespace, procs: Processes, results: dict) -> None:
    server = procs.server("fsyncs", sync_always=True)
    results["fence"] = fence = await fence_in_a_batch(server.url)
    if "error" not in fence["stale_fence_batch"] or fence["stored_after"] != fence["stored_expected"]:
        results["errors"].append(f"a stale fence did not refuse its whole batch: {fence}")
    results["rounds"] = rounds = []
    for n in range(args.rounds):
        for mode in MODES:
            say(f"round {n + 1}/{args.rounds}: {MODES[mode]}, {args.writers} writers, {args.seconds:g} s ...")
            r = await one_round(server.url, mode, args)
            rounds.append(r)
            if r["stored"] < r["writes"]:
                results["errors"].append(f"{mode}: {r['writes']} writes counted, {r['stored']} stored")
    procs.stop(server)
    results["summary"] = {
        mode: {
            "writes_per_s_median": statistics.median(r["writes_per_s"] for r in rounds if r["mode"] == mode),
            "client_cpu_us_per_write_median": statistics.median(
                r["client_cpu_us_per_write"] for r in rounds if r["mode"] == mode
            ),
        }
        for mode in MODES
        if any(r["mode"] == mode for r in rounds)
    }


def render(results: dict) -> str:
    s = results.get("settings", {})
    out = [
        f"dagnats shared-fsyncs benchmark: {s.get('writers')} writers, one subject each, fenced appends "
        "into one stream",
        "",
    ]
    out += machine_rows(results) + [""]
    rows = [
        [
            MODES[r["mode"]],
            f"{r['writes']:,}",
            f"{r['stored']:,}",
            _num(r["writes_per_s"], 0),
            _num(r["client_cpu_us_per_write"], 1),
        ]
        for r in results.get("rounds", [])
    ]
    out += _table(["mode", "writes", "stored", "writes/s", "client CPU us/write"], rows, {1, 2, 3, 4})
    summary = results.get("summary", {})
    if len(summary) == 2:
        single, batched = summary["single"], summary["batched"]
        ratio = batched["writes_per_s_median"] / max(single["writes_per_s_median"], 1)
        out.append(
            f"\nmedian writes/s: {_num(single['writes_per_s_median'], 0)} one ack each, "
            f"{_num(batched['writes_per_s_median'], 0)} in atomic batches ({ratio:.2f}x)"
        )
    fence = results.get("fence")
    if fence:
        refused = fence["stale_fence_batch"].get("error", {})
        out.append(
            f"a stale fence on one write of a batch: refused whole ({refused.get('err_code')} "
            f"{refused.get('description')}), {fence['stored_after']} stored of {fence['stored_expected']} expected"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"writers": args.writers, "seconds": args.seconds, "rounds": args.rounds}

    async def phases(procs: Processes, results: dict, stamp: str) -> None:
        await run_phases(args, procs, results)

    return run_session("shared-fsyncs-{stamp}", settings, phases, render, keep=args.keep, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
