"""What the CLI's reads leave behind on the server: nothing that outlives the read.

The engine is `dagnats serve --external` on a nats-server the test owns; the
test reads consumer counts straight from JetStream (observation only).
"""

from __future__ import annotations

import nats
import pytest

from dagnats.infra.engine.server import NatsServer

from e2e_support import EXAMPLES, Cli, Serve, wait_for

pytestmark = pytest.mark.e2e

RUNS_STREAM = "KV_workflow_runs"


async def consumer_count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.consumer_count
    finally:
        await nc.close()


def test_listing_runs_leaves_no_consumers_behind(tmp_path, run):
    server = NatsServer(tmp_path / "nats")
    server.start_sync()
    serve = Serve(server.url, external=True)
    try:
        serve.start()
        cli = Cli(server.url)
        cli.register(EXAMPLES / "hello-pipeline" / "pipeline.json")
        before = run(consumer_count(server.url, RUNS_STREAM))
        for _ in range(10):
            cli("run", "list", json=True)
        wait_for(
            lambda: run(consumer_count(server.url, RUNS_STREAM)) <= before + 1,
            8,
            f"the consumers of 10 `run list` calls on {RUNS_STREAM} to go away",
            interval=0.5,
        )
    finally:
        serve.stop()
        server.stop_sync()
