"""DST-lite: the engine's invariants over many seeded simulations (tests/sim, docs/operations.md).

``DAGNATS_SIM_SEEDS`` seeds (default 1,000) in ``CHUNKS`` parametrized chunks, so xdist
spreads them; every seed in ``tests/sim/fuzz_cases.txt`` on every run. A failure names
the seed and the command that replays it alone with its trace.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from pathlib import Path

import pytest

from dagnats.domain.events import decode_record

from sim.invariants import check
from sim.scheduler import Simulation

SEEDS = int(os.environ.get("DAGNATS_SIM_SEEDS", "1000"))
CHUNKS = 8
FUZZ_CASES = Path(__file__).parent / "sim" / "fuzz_cases.txt"


def fuzz_cases() -> list[object]:
    """Every seed in fuzz_cases.txt; one whose comment starts with ``open:`` is a known,
    unfixed failure and runs as a strict xfail (it must keep failing until fixed)."""
    cases: list[object] = []
    for line in FUZZ_CASES.read_text().splitlines():
        seed, _, note = (part.strip() for part in line.partition("#"))
        if not seed:
            continue
        if note.startswith("open:"):
            cases.append(pytest.param(int(seed), marks=pytest.mark.xfail(reason=note, strict=True)))
        else:
            cases.append(int(seed))
    return cases


def replay_command(seed: int) -> str:
    return f"DAGNATS_SIM_SEED={seed} .venv/bin/pytest tests/test_simulation.py -k replay -s"


def problems(seed: int) -> list[str]:
    try:
        return check(Simulation(seed).run()).violations
    except Exception:  # noqa: BLE001 - the simulation itself broke: as much a finding
        return [f"the simulation raised:\n{traceback.format_exc()}"]


def failures_of(seeds: list[int]) -> str:
    found = []
    for seed in seeds:
        violations = problems(seed)
        if violations:
            found.append(f"seed {seed} failed: " + "; ".join(violations[:5]) + f"\n  replay: {replay_command(seed)}")
    if found:
        print("\n".join(found))
    return "\n".join(found)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeded_simulations_keep_the_invariants(chunk):
    failed = failures_of(list(range(chunk, SEEDS, CHUNKS)))
    assert not failed, failed


@pytest.mark.parametrize("seed", fuzz_cases())
def test_seeds_that_once_failed_keep_the_invariants(seed):
    failed = failures_of([seed])
    assert not failed, failed


def test_a_seed_replays_exactly():
    first, second = Simulation(7).run(), Simulation(7).run()
    assert first.trace == second.trace
    for run_id in first.runs:
        ours = [(r.seq, r.body, r.writer) for r in first.world.history.records.get(run_id, [])]
        again = [(r.seq, r.body, r.writer) for r in second.world.history.records.get(run_id, [])]
        assert ours == again


def test_the_simulation_injects_every_fault_it_claims():
    totals: Counter[str] = Counter()
    for seed in range(40):
        totals.update(check(Simulation(seed).run()).stats)
    for what in ("kills", "pauses", "takeovers", "zombie_appends_failed", "appends_refused", "fault: worker crash"):
        assert totals[what] > 0, f"no {what} in 40 seeds: {dict(totals)}"
    assert totals["dup_exec_within_bound"] > 0 and totals["dup_exec_beyond_bound"] == 0


@pytest.mark.skipif("DAGNATS_SIM_SEED" not in os.environ, reason="set DAGNATS_SIM_SEED to replay one seed")
def test_replay_one_seed():
    seed = int(os.environ["DAGNATS_SIM_SEED"])
    sim = Simulation(seed).run()
    report = check(sim)
    print(f"seed {seed}: {sim.faults}; runs {sim.runs}")
    print("\n".join(sim.trace))
    for run_id in sim.runs:
        print(f"history of {run_id}:")
        for r in sim.world.history.records.get(run_id, []):
            events = [(e.type, e.step_id, e.attempt) for e in decode_record(r.body)]
            print(f"  {r.seq:4d} (expected {r.expected}) by {r.writer}: {events}")
    print(dict(report.stats))
    assert not report.violations, "\n".join(report.violations)
