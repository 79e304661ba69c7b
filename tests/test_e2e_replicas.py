"""`dagnats serve` against a 3-node cluster keeps three copies of everything by default."""

from __future__ import annotations

import asyncio

import nats
import pytest

from dagnats.infra.engine.streams import KV_BUCKETS, stream_configs

from e2e_support import Serve

pytestmark = pytest.mark.e2e


def test_serve_on_a_cluster_replicates_every_stream_and_bucket_three_times(cluster3):
    urls = ",".join(server.url for server in cluster3)
    serve = Serve(urls, external=True).start(timeout=60)
    try:

        async def replicas():
            nc = await nats.connect(urls.split(","))
            try:
                js = nc.jetstream()
                names = [config.name for config in stream_configs()] + [f"KV_{b}" for b in KV_BUCKETS]
                return {name: (await js.stream_info(name)).config.num_replicas for name in names}
            finally:
                await nc.close()

        found = asyncio.run(replicas())
    finally:
        serve.stop()
    assert found and set(found.values()) == {3}, found
