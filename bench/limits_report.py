"""bench/limits.py's results as aligned text: `render(results)`."""

from __future__ import annotations

from bench.report import _num, _render_profile, _table

GOAL = 0.80  # runs/s with a limit that never binds, as a share of runs/s without one
LABELS = {
    "none": "no limit",
    "max_task_concurrency": "max_task_concurrency 1000, every step",
    "rate_limit": "rate_limit 10,000 per 1 s, every step",
}


def render(results: dict) -> str:
    m = results.get("machine", {})
    quick = "  (--quick)" if results.get("settings", {}).get("quick") else ""
    out = [f"dagnats flow-control benchmark{quick}", ""]
    out += _table(
        ["machine", ""],
        [
            ["date", m.get("date", "?")],
            ["cores / cpu", f"{m.get('cores')} / {m.get('cpu', '?')}"],
            ["python / nats-py / nats-server", f"{m.get('python')} / {m.get('nats_py')} / {m.get('nats_server', '?')}"],
            ["dagnats commit", m.get("dagnats_commit", "?")],
            ["load average (start -> end)", f"{m.get('load_average_at_start')} -> {m.get('load_average_at_end')}"],
            ["server sync", "sync_interval: always (fsync every write)"],
        ],
        set(),
    )
    out.append("")
    if "overhead" in results:
        out += overhead(results["overhead"], results.get("settings", {})) + [""]
    if "fairness" in results:
        out += fairness(results["fairness"]) + [""]
    if "scale" in results:
        out += scale(results["scale"]) + [""]
    return "\n".join(out).rstrip()


def _per_round(values: list) -> str:
    return " / ".join(_num(v, 0) for v in values)


def overhead(data: dict, settings: dict) -> list[str]:
    pooled = data.get("pooled", {})
    loaded, unloaded = pooled.get("loaded", {}), pooled.get("unloaded", {})
    rounds = len(data.get("rounds", []))
    out = [
        f"1. a limit that never binds: the 3-step chain, {rounds} rounds of each variant in turn "
        f"(loaded: {settings.get('loaded_runs')} runs, {settings.get('in_flight')} in flight; "
        f"unloaded: {settings.get('unloaded_runs')} runs one at a time)",
        "",
    ]
    rows = []
    for variant, label in LABELS.items():
        a, u = loaded.get(variant), unloaded.get(variant)
        if not a or not u:
            continue
        writes = a["writes_per_run"]
        failed = a["failed"] + u["failed"]
        rows.append(
            [
                label,
                _num(a["runs_per_s"]),
                _per_round(a["per_round_runs_per_s"]),
                _num(a["p50_ms"]),
                _num(a["p90_ms"]),
                _num(u["p50_ms"], 2),
                _num(u["p90_ms"], 2),
                f"{writes['history']:g}",
                f"{writes['flow_kv']:g}",
                str(failed),
            ]
        )
    out += _table(
        [
            "variant",
            "runs/s",
            "per round",
            "p50 ms",
            "p90 ms",
            "1-at-a-time p50",
            "p90",
            "history/run",
            "flow KV/run",
            "failed",
        ],
        rows,
        {1, 2, 3, 4, 5, 6, 7, 8, 9},
    )
    out.append("(runs/s: all rounds' runs / their summed wall time; p50, p90: the median of the rounds' values)")
    base = loaded.get("none", {}).get("runs_per_s")
    for variant in ("max_task_concurrency", "rate_limit"):
        limited = loaded.get(variant)
        if not base or not limited or not limited.get("runs_per_s"):
            continue
        ratio = limited["runs_per_s"] / base
        per_round = [
            b / n for b, n in zip(limited["per_round_runs_per_s"], loaded["none"]["per_round_runs_per_s"], strict=True)
        ]
        met = "MET" if ratio >= GOAL else "MISSED"
        p50_up = unloaded[variant]["p50_ms"] - unloaded["none"]["p50_ms"]
        out.append(
            f"{LABELS[variant]}: runs/s {ratio:.1%} of no limit "
            f"(per round {min(per_round):.1%}..{max(per_round):.1%}); "
            f"goal >= {GOAL:.0%}: {met}; one at a time p50 {p50_up:+.2f} ms"
        )
    cpu = [
        [LABELS[v], ", ".join(f"{k} {x:g}%" for k, x in loaded[v]["cpu_percent"].items())]
        for v in LABELS
        if v in loaded
    ]
    if cpu:
        out += [""] + _table(["CPU while loaded, last round (100% = one core)", ""], cpu, set())
    sizes = data.get("flow_kv", {})
    if sizes:
        entries = ", ".join(f"{k} {v:,} B" for k, v in sorted(sizes.items()))
        out.append(f"flow_control entries after the phase: {entries}")
    for variant in LABELS:
        profile = (data.get("rounds") or [{}])[0].get("loaded", {}).get(variant, {}).get("profile")
        if profile:
            out += ["", f"profile of the first loaded batch of: {LABELS[variant]}"] + _render_profile(profile)
    idle, after = data.get("idle", {}), data.get("after", {})
    out.append(
        f"engine: {_num(idle.get('rss_mb'))} MB, {idle.get('Threads')} threads idle; "
        f"{_num(after.get('rss_mb'))} MB (peak {_num(after.get('hwm_mb'))}), {after.get('Threads')} threads after"
    )
    return out


def fairness(data: dict) -> list[str]:
    rule = data.get("rule", {})
    out = [
        f"2. fairness: keyed_rate_limit {rule.get('limit')} per {rule.get('period')} on '{rule.get('key')}', "
        f"{data.get('keys')} keys x {data.get('per_key')} runs of a one-step workflow, "
        "at most 100 start requests in flight; seconds from the first start request",
    ]
    for order in ("interleaved", "blocks"):
        part = data.get(order)
        if not part:
            continue
        acked = part.get("starts_acked_s") or [None, None]
        out += [
            "",
            f"started {order}: start requests answered {_num(acked[0], 2)}..{_num(acked[1], 2)} s; "
            f"{part['runs'] - part['failed']} of {part['runs']} completed, the last at {_num(part['all_done_s'], 2)} s",
        ]
        rows = [
            [key, str(v["runs"]), _num(v["first_s"], 2), _num(v["median_s"], 2), _num(v["last_s"], 2)]
            for key, v in part["per_key"].items()
        ]
        out += _table(["key", "runs", "first s", "median s", "last s"], rows, {1, 2, 3, 4})
        low, high = part.get("last_range_s") or [None, None]
        waits = part.get("limited_per_run", {})
        engine = part.get("engine", {})
        out += [
            f"last completion across keys: {_num(low, 2)}..{_num(high, 2)} s, "
            f"spread {_num(part['last_spread_s'], 2)} s",
            f"most runs of one key admitted within any {rule.get('period')} (the rate windows' entries, "
            f"flow control's clock, each run at its last grant): {part.get('most_admitted_in_one_period')} "
            f"(limit {rule.get('limit')}); runs granted a token twice: {part.get('entries_moved')}",
            f"most tasks of one key whose handler started within any {rule.get('period')} (worker clock): "
            f"{part.get('most_started_in_one_period')}",
            f"history records per run {part['writes_per_run']['history']:g}, "
            f"flow_control writes per run {part['writes_per_run']['flow_kv']:g}",
            f"step.limited per run (told to wait): mean {waits.get('mean')}, max {waits.get('max')}, "
            f"total {waits.get('total')}",
            f"engine during the batch: threads {engine.get('first', {}).get('threads')} -> peak "
            f"{engine.get('peak_threads', {}).get('threads')}, "
            f"RSS peak {_num(engine.get('peak_rss', {}).get('rss_mb'))} MB",
        ]
        for failure in part.get("first_failures", []):
            out.append(f"  failed: {failure}")
        out += _render_profile(part.get("profile") or {})
    return out


def scale(data: dict) -> list[str]:
    rule = data.get("rule", {})
    idle = data.get("idle", {})
    out = [
        f"3. scale: {data.get('runs'):,} runs of a one-step workflow, 100 in flight; keyed: keyed_rate_limit "
        f"{rule.get('limit')} per {rule.get('period')} on the run's serial number ({data.get('runs'):,} keys, one run "
        "each); engine /proc sampled every 0.5 s",
        f"engine idle before: {_num(idle.get('rss_mb'))} MB, {idle.get('Threads')} threads",
        "",
    ]
    rows = []
    for workflow, label in (("keyed", f"keyed rate limit, {data.get('runs'):,} keys"), ("plain", "no limit (after)")):
        part = data.get(workflow)
        if not part:
            continue
        engine, after = part["engine"], part["engine_after_2s"]
        rows.append(
            [
                label,
                f"{part['runs']:,}",
                str(part["failed"]),
                _num(part["elapsed_s"]),
                _num(part["runs_per_s"]),
                _num(part["p50_ms"]),
                _num(part["p90_ms"]),
                _num(engine["first"]["rss_mb"]),
                _num(engine["peak_rss"]["rss_mb"]),
                _num(after["rss_mb"]),
                str(engine["peak_threads"]["threads"]),
                str(after["Threads"]),
                f"{part['writes_per_run']['flow_kv']:g}",
            ]
        )
    out += _table(
        [
            "runs",
            "count",
            "failed",
            "s",
            "runs/s",
            "p50 ms",
            "p90 ms",
            "RSS MB at start",
            "peak",
            "end +2 s",
            "threads peak",
            "end",
            "flow KV/run",
        ],
        rows,
        set(range(1, 13)),
    )
    listing = data.get("listing")
    if listing:
        out.append(
            f"flow_control bucket after the keyed run: {listing['flow_kv_keys']:,} keys, "
            f"{listing['flow_kv_bytes']:,} bytes"
        )
        for label in ("all", "prefix matching none"):
            got = listing.get(label, {})
            what = got.get("error") or f"{got.get('keys_listed')} keys listed"
            out.append(f"Client.limits({label}): {_num(got.get('seconds'), 2)} s: {what}")
        after = listing.get("engine_after_listing", {})
        out.append(f"engine after the listings: {_num(after.get('rss_mb'))} MB, {after.get('Threads')} threads")
    out += _render_profile((data.get("keyed") or {}).get("profile") or {})
    return out
