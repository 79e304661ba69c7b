"""`dagnats cluster up|status|down` as a user types it: free ports, a tmp cluster dir.

`up` leaves three nats-servers and an engine running after the command
exits; `status --json` finds them again from the state file; a second `up`
is refused; `down` stops them by PID and removes the state, and copes with
processes that died meanwhile.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from dagnats.infra.drill.processes import cmdline_of, is_alive

from e2e_support import Cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def cluster_dir(tmp_path):
    directory = tmp_path / "cluster"
    yield directory
    if (directory / "state.json").exists():  # a failed test must not leave processes behind
        Cli("nats://127.0.0.1:1")("cluster", "down", "--dir", str(directory), check=False, timeout=60)


def cluster(cluster_dir, *args, **kw):
    return Cli("nats://127.0.0.1:1")("cluster", *args, "--dir", str(cluster_dir), **kw)


def test_cluster_up_status_and_down_on_free_ports(cluster_dir):
    up = cluster(cluster_dir, "up", "--nodes", "3", "--engines", "1", "--base-port", "0", json=True, timeout=120)
    roles = [(p["role"], p["name"]) for p in up["processes"]]
    assert roles == [("nats", "n1"), ("nats", "n2"), ("nats", "n3"), ("engine", "engine1")]
    assert all(p["alive"] for p in up["processes"])
    assert len(up["url"].split(",")) == 3

    status = cluster(cluster_dir, "status", json=True)
    nodes = [p for p in status["processes"] if p["role"] == "nats"]
    leaders = {p["meta_leader"] for p in nodes}
    assert len(leaders) == 1 and leaders.pop() in {"n1", "n2", "n3"}
    assert all(p["current"] for p in nodes)
    # The engine answers on the cluster's URL.
    engine = Cli(status["url"])("status", json=True)
    assert engine["jetstream"]["streams"]

    human = cluster(cluster_dir, "status")
    assert "JETSTREAM" in human.stdout and "engine1" in human.stdout

    pids = [p["pid"] for p in status["processes"]]
    down = cluster(cluster_dir, "down", json=True, timeout=60)
    assert sorted(down["stopped"]) == ["engine1", "n1", "n2", "n3"]
    assert not (cluster_dir / "state.json").exists()
    assert not any(is_alive(pid) for pid in pids)


def test_a_second_up_is_refused_while_the_first_runs(cluster_dir):
    cluster(cluster_dir, "up", "--nodes", "1", "--engines", "1", "--base-port", "0", timeout=120)
    again = cluster(cluster_dir, "up", "--nodes", "1", "--engines", "1", "--base-port", "0", check=False)
    assert again.returncode == 1
    assert again.stderr.startswith("error: a cluster is already running") and "cluster down" in again.stderr
    cluster(cluster_dir, "down", timeout=60)


def test_down_copes_with_processes_that_died_and_status_without_state_is_an_error(cluster_dir):
    up = cluster(cluster_dir, "up", "--nodes", "1", "--engines", "1", "--base-port", "0", json=True, timeout=120)
    engine = next(p for p in up["processes"] if p["role"] == "engine")
    assert "serve" in cmdline_of(engine["pid"])
    os.kill(engine["pid"], signal.SIGKILL)
    wait_for(lambda: not is_alive(engine["pid"]), 10, "the engine to die")
    status = cluster(cluster_dir, "status", json=True)
    assert [p["alive"] for p in status["processes"]] == [True, False]
    down = cluster(cluster_dir, "down", json=True, timeout=60)
    assert down["already_gone"] == ["engine1"] and down["stopped"] == ["n1"]
    missing = cluster(cluster_dir, "status", check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no cluster state")


def test_state_file_records_what_status_shows(cluster_dir):
    cluster(cluster_dir, "up", "--nodes", "1", "--engines", "0", "--base-port", "0", timeout=120)
    state = json.loads((cluster_dir / "state.json").read_text())
    assert [p["name"] for p in state["processes"]] == ["n1"]
    assert "sync_interval: always" in (cluster_dir / "n1" / "nats-server.conf").read_text()
    cluster(cluster_dir, "down", timeout=60)
