"""`dagnats serve` with its embedded nats-server, killed with -9 and started again."""

from __future__ import annotations

import pytest

from dagnats.infra.engine.server import free_port

from e2e_support import Cli, Serve, _alive

WF = {"name": "after-crash", "steps": [{"id": "a", "task": "never-run"}]}


def test_serve_killed_with_9_starts_again_on_the_same_data_dir_and_keeps_its_runs(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    serve = Serve(url, data_dir=tmp_path / "data")
    cli = Cli(url)
    try:
        serve.start()
        cli.register(WF, tmp_path)
        run_id = cli.start("after-crash", {"n": 1})
        orphans_before = serve.orphans()
        serve.kill()  # the embedded nats-server survives its parent...
        assert serve.orphans() == orphans_before and orphans_before
        serve.start()  # ...and the new serve takes it down and starts its own on the same port
        status = cli.status(run_id)
        assert status["status"] == "running" and status["input"] == {"n": 1}
        assert [w["name"] for w in cli("workflow", "list", json=True)] == ["after-crash"]
        assert not any(_alive(pid) for pid in orphans_before)  # the orphan was stopped, not reused
    finally:
        serve.stop()


def test_serve_that_cannot_create_its_streams_says_why_and_stops_only_what_it_started(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    serve = Serve(url, data_dir=tmp_path / "data", extra=["--replicas", "3"])  # one node cannot keep 3 copies
    with pytest.raises(AssertionError, match="exited with code 1") as failed:
        serve.start()
    output = str(failed.value)
    assert "error: cannot create or update" in output
    assert "did not stop cleanly" not in output  # nothing half-started is stopped
    assert "dagnats: stopped" in output
    assert not serve.orphans()  # its embedded nats-server went with it
