"""The results as an aligned table for people, and as JSON for machines.

`assess(results)` adds the ratio and the goals; `render(results)` returns the
text that `run.py` prints; `write(results, paths)` stores the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

SYNC_LABELS = {"always": "sync_interval: always (fsync every write)", "default": "server default (fsync every 2 min)"}
THROUGHPUT_GOAL = 0.25  # engine runs/s >= 25% of the raw loop's
UNLOADED_P50_GOAL_MS = 15.0
MEMORY_GOAL_MB = 50.0


def assess(results: dict) -> None:
    """Add `ratios` and `goals` to `results`, from what was measured.

    The throughput ratio divides by the mean of the raw loop's loaded runs/s
    measured before and after the engine (when both ran): the machine is
    shared, and the two readings bracket the engine's.
    """
    loops = results.get("raw_loop", {})
    eng = results.get("engine", {})
    ratios: dict = {"sync": "always"}
    goals: list[dict] = []
    raw_rates = [
        loops[k]["loaded"]["runs_per_s"]
        for k in ("always", "always_after_engine")
        if loops.get(k, {}).get("loaded", {}).get("runs_per_s")
    ]
    eng_rate = eng.get("loaded", {}).get("runs_per_s")
    if raw_rates and eng_rate:
        raw_rate = sum(raw_rates) / len(raw_rates)
        ratios["raw_runs_per_s_used"] = round(raw_rate, 1)
        ratios["throughput"] = round(eng_rate / raw_rate, 3)
        ratios["throughput_range"] = [round(eng_rate / max(raw_rates), 3), round(eng_rate / min(raw_rates), 3)]
        goals.append(
            _goal(
                f"engine runs/s >= {THROUGHPUT_GOAL:.0%} of the raw loop's (same concurrency, same sync)",
                f"{ratios['throughput']:.1%}",
                ratios["throughput"] >= THROUGHPUT_GOAL,
            )
        )
        direct = eng.get("loaded_direct_start", {}).get("runs_per_s")
        if direct:
            ratios["throughput_direct_start"] = round(direct / raw_rate, 3)
    raw_p50s = [
        loops[k]["unloaded"]["p50_ms"]
        for k in ("always", "always_after_engine")
        if loops.get(k, {}).get("unloaded", {}).get("p50_ms")
    ]
    eng_p50 = eng.get("unloaded", {}).get("p50_ms")
    if raw_p50s and eng_p50:
        ratios["unloaded_p50_vs_raw"] = round(eng_p50 / (sum(raw_p50s) / len(raw_p50s)), 2)
    if eng_p50 is not None:
        goals.append(
            _goal(
                f"unloaded 3-step p50 < {UNLOADED_P50_GOAL_MS:g} ms",
                f"{eng_p50:.1f} ms",
                eng_p50 < UNLOADED_P50_GOAL_MS,
            )
        )
    memory = eng.get("memory", {})
    idle = memory.get("idle_after_start", {}).get("rss_mb")
    after = [m["rss_mb"] for key, m in memory.items() if key.startswith("after_")]
    if idle is not None and after:
        growth = round(max(after) - idle, 1)
        ratios["rss_growth_mb"] = growth
        goals.append(
            _goal(
                f"engine RSS after the batches within {MEMORY_GOAL_MB:g} MB of idle",
                f"+{growth:g} MB",
                growth <= MEMORY_GOAL_MB,
            )
        )
    results["ratios"], results["goals"] = ratios, goals


def _goal(text: str, measured: str, met: bool) -> dict:
    return {"goal": text, "measured": measured, "met": met}


# -- text -------------------------------------------------------------------------


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _row(label: str, sync: str, data: dict | None, rate_key: str, unit: str) -> list[str] | None:
    if not data:
        return None
    in_flight = data.get("concurrency") or data.get("loops") or data.get("publishers") or 1
    count = data.get("count", 0)
    failed = data.get("failed")
    count_text = f"{count}" + (f" ({failed} failed)" if failed else "")
    return [
        label,
        sync,
        str(in_flight),
        count_text,
        f"{_num(data.get(rate_key))} {unit}",
        _num(data.get("p50_ms"), 2),
        _num(data.get("p99_ms"), 2),
    ]


def render(results: dict) -> str:
    out: list[str] = []
    m = results.get("machine", {})
    out += ["dagnats benchmark" + ("  (--quick)" if results.get("settings", {}).get("quick") else ""), ""]
    out += _table(
        ["machine", ""],
        [
            ["date", m.get("date", "?")],
            ["cores / memory", f"{m.get('cores')} / {m.get('memory_gb')} GiB"],
            ["cpu", m.get("cpu", "?")],
            ["python / nats-py", f"{m.get('python')} / {m.get('nats_py')}"],
            ["nats-server", m.get("nats_server", "?")],
            ["dagnats commit", m.get("dagnats_commit", "?")],
            ["load average (start -> end)", f"{m.get('load_average_at_start')} -> {m.get('load_average_at_end')}"],
            ["server sync (unless noted)", SYNC_LABELS["always"]],
        ],
        set(),
    )
    out.append("")

    sub = results.get("substrate", {})
    raw = results.get("raw_loop", {})
    eng = results.get("engine", {})
    rows = [
        _row("substrate: publish to one stream", "always", sub.get("publish_sequential"), "publishes_per_s", "msg/s"),
        _row("substrate: publish to one stream", "always", sub.get("publish_concurrent"), "publishes_per_s", "msg/s"),
        _row("substrate: round trip", "always", sub.get("round_trip_sequential"), "trips_per_s", "trips/s"),
        _row("substrate: round trip", "always", sub.get("round_trip_concurrent"), "trips_per_s", "trips/s"),
        _row("raw 3-step loop, loaded", "always", raw.get("always", {}).get("loaded"), "runs_per_s", "runs/s"),
        _row("raw 3-step loop, unloaded", "always", raw.get("always", {}).get("unloaded"), "runs_per_s", "runs/s"),
        _row("raw 3-step loop, loaded", "default", raw.get("default", {}).get("loaded"), "runs_per_s", "runs/s"),
        _row("raw 3-step loop, unloaded", "default", raw.get("default", {}).get("unloaded"), "runs_per_s", "runs/s"),
        _row("engine 3-step, loaded (batch 1)", "always", eng.get("loaded"), "runs_per_s", "runs/s"),
        _row("engine 3-step, unloaded", "always", eng.get("unloaded"), "runs_per_s", "runs/s"),
        _row("engine 3-step, loaded (batch 2)", "always", eng.get("loaded_second_batch"), "runs_per_s", "runs/s"),
        _row("engine, Client.start + wait, loaded", "always", eng.get("loaded_api"), "runs_per_s", "runs/s"),
        _row("engine, Client.start + wait, unloaded", "always", eng.get("unloaded_api"), "runs_per_s", "runs/s"),
        _row("engine, start fact to inbox, loaded *", "always", eng.get("loaded_direct_start"), "runs_per_s", "runs/s"),
        _row(
            "engine, start fact to inbox, unloaded *",
            "always",
            eng.get("unloaded_direct_start"),
            "runs_per_s",
            "runs/s",
        ),
        _row(
            "raw 3-step loop, loaded (again)",
            "always",
            raw.get("always_after_engine", {}).get("loaded"),
            "runs_per_s",
            "runs/s",
        ),
        _row(
            "raw 3-step loop, unloaded (again)",
            "always",
            raw.get("always_after_engine", {}).get("unloaded"),
            "runs_per_s",
            "runs/s",
        ),
    ]
    out += _table(
        ["measurement", "sync", "in flight", "count", "rate", "p50 ms", "p99 ms"],
        [r for r in rows if r],
        {2, 3, 4, 5, 6},
    )
    if eng.get("loaded_direct_start"):
        out.append(
            "* diagnostic: the bench publishes the workflow.started fact to the inbox itself, "
            "as run.start does, bypassing the control plane"
        )
    for key, label in (
        ("loaded", "batch 1"),
        ("loaded_second_batch", "batch 2"),
        ("loaded_direct_start", "start fact to inbox"),
    ):
        if eng.get(key, {}).get("steps_per_s"):
            out.append(f"engine steps/s ({label}): {_num(eng[key]['steps_per_s'])}  (3 steps per run)")
    out.append("")

    cpu_rows = []
    for label, data in (
        ("raw loop loaded (always)", raw.get("always", {}).get("loaded")),
        ("raw loop loaded (default)", raw.get("default", {}).get("loaded")),
        ("engine batch 1", eng.get("loaded")),
        ("engine batch 2", eng.get("loaded_second_batch")),
        ("engine, Client.start + wait", eng.get("loaded_api")),
        ("engine, start fact to inbox", eng.get("loaded_direct_start")),
        ("raw loop loaded (again)", raw.get("always_after_engine", {}).get("loaded")),
    ):
        if data and data.get("cpu_percent"):
            cpu_rows.append([label, ", ".join(f"{k} {v:g}%" for k, v in data["cpu_percent"].items())])
    if cpu_rows:
        out += _table(["CPU while loaded (100% = one core)", ""], cpu_rows, set()) + [""]

    message_rows = [
        [label, kind, _num(counts["sent"]), _num(counts["received"])]
        for label, key in (
            ("engine batch 1", "loaded"),
            ("engine, Client.start + wait", "loaded_api"),
            ("engine, start fact to inbox", "loaded_direct_start"),
        )
        for kind, counts in (eng.get(key, {}).get("messages_per_run") or {}).items()
    ]
    if message_rows:
        out += _table(
            ["messages per run, by connection (server's counters)", "whose", "sent", "received"],
            message_rows,
            {2, 3},
        ) + [""]

    memory = eng.get("memory", {})
    if memory:
        mem_rows = [
            [
                key.replace("_", " "),
                _num(v.get("rss_mb")),
                _num(v.get("hwm_mb")),
                str(v.get("threads")),
                str(v.get("live_runs")),
                _num(v.get("worker_rss_mb")),
            ]
            for key, v in memory.items()
        ]
        out += _table(
            ["engine memory", "RSS MB", "peak MB", "threads", "live runs", "worker RSS MB"], mem_rows, {1, 2, 3, 4, 5}
        ) + [""]

    hops = eng.get("unloaded_hops")
    if hops:
        out += _table(
            ["unloaded engine run, hop by hop (history event timestamps)", "p50 ms", "p90 ms", "max ms"],
            [[h["hop"], _num(h["p50_ms"], 2), _num(h["p90_ms"], 2), _num(h.get("max_ms"), 2)] for h in hops],
            {1, 2, 3},
        )
        out.append(f"(sum of the hop medians: {sum(h['p50_ms'] for h in hops):.1f} ms)")
        out.append("")

    writes = eng.get("writes_per_run")
    if writes:
        out.append(
            "stored writes per engine run (stream last sequence / runs started, "
            f"{writes['runs_started']} runs): "
            + ", ".join(f"{k} {v:g}" for k, v in writes.items() if k != "runs_started")
        )
        out.append("")

    ratios = results.get("ratios", {})
    if "throughput" in ratios:
        low, high = ratios["throughput_range"]
        out.append(
            f"ratio engine/raw runs/s (in flight {eng['loaded']['concurrency']}, {SYNC_LABELS['always']}): "
            f"{ratios['throughput']:.1%} (raw loop {ratios['raw_runs_per_s_used']:g} runs/s, mean of "
            f"before/after; {low:.1%}..{high:.1%} against either)"
        )
    if "throughput_direct_start" in ratios:
        out.append(f"ratio with start facts published to the inbox directly: {ratios['throughput_direct_start']:.1%}")
    if "unloaded_p50_vs_raw" in ratios:
        out.append(f"engine unloaded p50 = {ratios['unloaded_p50_vs_raw']:g} x the raw loop's")
    for goal in results.get("goals", []):
        out.append(f"goal {'MET ' if goal['met'] else 'MISSED'}  {goal['goal']}: {goal['measured']}")

    out += _render_profile(eng.get("profile") or {})
    return "\n".join(out)


def _render_profile(profile: dict) -> list[str]:
    out: list[str] = []
    cpu, wall = profile.get("cpu", {}), profile.get("wall", {})
    if cpu.get("samples"):
        out += ["", f"engine CPU profile (py-spy --gil: the GIL holder, {cpu['samples']} samples; % of samples)"]
        out += _table(["thread", "%"], [[n, f"{p:g}"] for n, p in cpu["threads"]], {1})
        out += [""] + _table(["self (leaf function)", "%"], [[n, f"{p:g}"] for n, p in cpu["self"]], {1})
        out += [""] + _table(["package of leaf frame", "%"], [[n, f"{p:g}"] for n, p in cpu["packages"]], {1})
        out += [""] + _table(["inclusive", "%"], [[n, f"{p:g}"] for n, p in cpu["inclusive"]], {1})
    if wall.get("samples"):
        out += ["", f"engine wall profile (py-spy --idle: every thread, {wall['samples']} samples)"]
        out += _table(["thread kind", "% of all samples"], [[n, f"{p:g}"] for n, p in wall["threads"]], {1})
        for kind, rows in wall.get("sites", {}).items():
            out += [""] + _table(
                [f"{kind}: where its time goes (inner frames > leaf)", "% of its samples"],
                [[n, f"{p:g}"] for n, p in rows],
                {1},
            )
    for mode, data in profile.items():
        if isinstance(data, dict) and data.get("error"):
            out.append(f"profile {mode} failed: {data['error']}")
    return out


def write(results: dict, paths: list[Path]) -> None:
    text = json.dumps(results, indent=2)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
