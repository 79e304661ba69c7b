"""CI-sized crash-recovery drills (RELIABILITY.md §4.3): D1, D3, D5, D6, D7.

Each drill is `dagnats drill --local` (a deployment of its own in a temp dir):
runs of the instrumented workflow under load while one kind of fault fires on
a seeded schedule, then the same checker the CLI uses. Every drill asserts no
lost or stuck run, no divergent history and no duplicate execution beyond the
at-least-once bound. D5 drives the real CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from dagnats.infra.drill.runner import DrillOptions, DrillResult, run_drill

from e2e_support import CLI, ROOT, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def drill(**options) -> DrillResult:
    return run_drill(DrillOptions(local=True, **options))


def assert_sound(figures: dict, problems: list[str]) -> None:
    assert figures["runs_lost"] == 0, problems
    assert figures["runs_stuck"] == 0, problems
    assert figures["divergent_histories"] == 0, problems
    assert figures["dup_exec_beyond_bound"] == 0, problems
    # Progress, not just an absence of errors: every ordinary run did its work.
    assert figures["runs_completed"] == figures["runs_started"] - figures["runs_quarantined"], problems


def test_d1_engine_killed_under_load_with_two_engines_loses_no_run():
    result = drill(seed=101, runs=80, rate=10, kinds=("engine",), faults_per_kind=2, engines=2)
    figures = result.report.figures
    assert_sound(figures, result.report.problems)
    assert [f.kind for f in result.fired] == ["engine", "engine"]


def test_d3_worker_killed_mid_task_every_step_completes():
    result = drill(seed=303, runs=30, rate=10, kinds=("worker",), engines=1)
    figures = result.report.figures
    assert_sound(figures, result.report.problems)
    assert [f.kind for f in result.fired] == ["worker"]


def test_d5_poison_run_is_quarantined_while_the_other_runs_complete():
    argv = [*CLI, "drill", "--local", "--seed", "505", "--runs", "20", "--rate", "10"]
    argv += ["--faults", "none", "--poison", "1", "--engines", "1", "--deadline", "60", "--json"]
    done = subprocess.run(argv, env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    figures = result["figures"]
    assert_sound(figures, result["problems"])
    assert figures["runs_quarantined"] == 1
    assert figures["runs_completed"] == 20
    assert "--poison 1" in result["rerun"] and "--seed 505" in result["rerun"]


def test_d6_single_nats_node_killed_and_restarted_under_load():
    result = drill(seed=606, runs=40, rate=10, kinds=("nats",), engines=1)
    figures = result.report.figures
    assert_sound(figures, result.report.problems)
    assert [f.kind for f in result.fired] == ["nats"]
    assert figures["nats_unavailable_s"] > 0  # the probe saw the outage


def test_d7_history_stream_leader_of_three_nodes_killed_mid_load():
    result = drill(seed=707, runs=30, rate=6, kinds=("nats",), nodes=3, engines=1)
    figures = result.report.figures
    assert_sound(figures, result.report.problems)
    assert [f.kind for f in result.fired] == ["nats"]
    assert result.provenance["replicas"] == 3
