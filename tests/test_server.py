"""The embedded nats-server launcher against the real binary."""

from __future__ import annotations

import os

import nats
import pytest
from nats.js import api

from dagnats.infra.engine.server import NatsServer, PortInUseError, ServerError, free_port


async def publish_and_count(url: str, subject: str, *, publish: bool) -> int:
    """Optionally store one message on a DURABLE stream; return how many it holds."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    if publish:
        await js.add_stream(api.StreamConfig(name="DURABLE", subjects=["durable.>"]))
        await js.publish(subject, b"kept")
    info = await js.stream_info("DURABLE")
    await nc.close()
    return info.state.messages


def test_server_starts_and_accepts_a_connection(nats_server, run):
    async def body():
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().account_info()
        await nc.close()
        return info

    assert nats_server.url == f"nats://127.0.0.1:{nats_server.client_port}"
    assert nats_server.pid and nats_server.running
    assert run(body()).streams == 0


def test_jetstream_syncs_every_write_by_default(nats_server):
    config = nats_server.monitor("varz")["jetstream"]["config"]
    assert config["sync_always"] is True
    assert config["store_dir"].startswith(str(nats_server.data_dir))


def test_sync_always_can_be_turned_off(tmp_path):
    with NatsServer(tmp_path, sync_always=False, http_port=0) as server:
        # The server omits the field when it is false.
        assert server.monitor("varz")["jetstream"]["config"].get("sync_always", False) is False


def test_second_server_on_the_same_port_raises_port_in_use(nats_server, tmp_path):
    second = NatsServer(tmp_path / "second", port=nats_server.client_port)
    with pytest.raises(PortInUseError) as caught:
        second.start_sync()
    port = nats_server.client_port
    assert caught.value.port == port
    assert str(caught.value) == (
        f"port 127.0.0.1:{port} is already in use (is another dagnats serve or "
        "nats-server running? use --nats-url to pick another port)"
    )
    assert isinstance(caught.value, ServerError)


def test_unusable_data_dir_raises_server_error_with_the_fatal_line(tmp_path):
    # JetStream stores under <data_dir>/jetstream: a file there stops it.
    (tmp_path / "jetstream").write_text("not a directory")
    server = NatsServer(tmp_path, port=free_port())
    with pytest.raises(ServerError) as caught:
        server.start_sync()
    assert any(line.startswith("[FTL]") for line in caught.value.log_lines)
    assert "storage directory" in str(caught.value)
    assert not server.running


def test_published_message_survives_stop_and_restart(nats_server, run):
    assert run(publish_and_count(nats_server.url, "durable.a", publish=True)) == 1
    port = nats_server.client_port
    nats_server.stop_sync()
    assert not nats_server.running
    nats_server.start_sync()
    assert nats_server.client_port == port
    assert run(publish_and_count(nats_server.url, "durable.a", publish=False)) == 1


def test_acked_message_survives_kill_and_restart(nats_server, run):
    assert run(publish_and_count(nats_server.url, "durable.a", publish=True)) == 1
    pid = nats_server.pid
    nats_server.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    nats_server.start_sync()
    assert nats_server.pid != pid
    assert run(publish_and_count(nats_server.url, "durable.a", publish=False)) == 1


def test_async_context_manager_starts_and_stops(tmp_path, run):
    async def body():
        async with NatsServer(tmp_path) as server:
            nc = await nats.connect(server.url)
            await nc.close()
            return server

    server = run(body())
    assert not server.running and server.pid is None


def test_three_node_cluster_takes_a_replicated_stream(cluster3, run, publish_retrying):
    async def body():
        nc = await nats.connect(cluster3[0].url)
        js = nc.jetstream(timeout=20)  # a loaded machine can take seconds to place an R3 stream
        await js.add_stream(api.StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
        ack = await publish_retrying(js, "r3.x", b"replicated")
        info = await js.stream_info("R3")
        await nc.close()
        return ack, info

    ack, info = run(body())
    assert ack.seq == 1
    assert info.config.num_replicas == 3
    assert info.cluster.leader in {"n1", "n2", "n3"}
    assert len(info.cluster.replicas) == 2
    assert {server.server_name for server in cluster3} == {"n1", "n2", "n3"}
