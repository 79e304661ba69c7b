"""Fixtures against real nats-server processes, never a mock.

Layers:
    nats_server -> nats_url    a fresh server per test, data in tmp_path,
                               monitoring on (`nats_server.monitor("varz")`)
    shared_server -> shared_url  one server for the whole session: cheaper,
                               but streams and keys outlive each test
    cluster3                   three routed nodes (n1..n3) per module, with
                               a JetStream meta leader elected

Servers bind 127.0.0.1 on free ports and are stopped by the fixture
(SIGTERM, then SIGKILL of the PID it started). A test may `kill()` and
`start_sync()` its own server to drill a crash.

Async tests: pytest-asyncio is not used. Write the body as a coroutine and
hand it to `run`, which runs it on a fresh event loop (with a timeout):

    def test_publish_is_acked(nats_url, run):
        async def body():
            nc = await nats.connect(nats_url)
            ack = await nc.jetstream().publish("history.r1", b"x")
            await nc.close()
            return ack
        assert run(body()).seq == 1
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import nats
import pytest

from dagnats.infra import event_loop
from dagnats.infra.engine.server import NatsServer, run_cluster

T = TypeVar("T")


@pytest.fixture
def run() -> Callable[..., Any]:
    """Run a coroutine to completion on a fresh event loop: `run(body(), timeout=30)`."""

    def run_coroutine(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return event_loop.run(asyncio.wait_for(coro, timeout))  # the loop serve and workers run on

    return run_coroutine


async def _publish_retrying(js, subject: str, data: bytes, **kwargs: Any):
    # Right after a replicated stream is created (or its leader moves), the
    # node this client talks to may not know the leader's interest yet and
    # answers "no responders": retry for up to ~2 s.
    for _ in range(40):
        try:
            return await js.publish(subject, data, **kwargs)
        except nats.js.errors.NoStreamResponseError:
            await asyncio.sleep(0.05)
    return await js.publish(subject, data, **kwargs)


@pytest.fixture
def publish_retrying() -> Callable[..., Any]:
    """`await publish_retrying(js, subject, data, headers=...)`: js.publish that
    retries "no responders" while a new R3 stream settles."""
    return _publish_retrying


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    """A fresh JetStream server (sync_interval: always) for one test."""
    server = NatsServer(tmp_path / "nats", http_port=0)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of this test's own server."""
    return nats_server.url


@pytest.fixture(scope="module", name="nats")
def module_nats(tmp_path_factory) -> Iterator[NatsServer]:
    """One JetStream server for a test module (its e2e engines and workers come and go)."""
    server = NatsServer(tmp_path_factory.mktemp("module-nats"))
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory) -> Iterator[NatsServer]:
    """One JetStream server for the session; tests must use unique names on it."""
    server = NatsServer(tmp_path_factory.mktemp("shared-nats"), http_port=0)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
def shared_url(shared_server: NatsServer) -> str:
    """Client URL of the session's shared server."""
    return shared_server.url


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory) -> Iterator[list[NatsServer]]:
    """A 3-node cluster n1..n3 with a JetStream meta leader; stopped after the module."""
    servers = asyncio.run(run_cluster(3, base_dir=tmp_path_factory.mktemp("cluster3")))
    try:
        yield servers
    finally:
        for server in servers:
            server.stop_sync()
