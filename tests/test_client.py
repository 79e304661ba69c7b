"""The Python client against a real nats-server: what it refuses before sending anything."""

from __future__ import annotations

import nats
import pytest

from dagnats.domain.errors import InvalidInput
from dagnats.infra.client import Client

NOT_JSON = [float("nan"), float("inf"), {"deep": [1, float("-inf")]}]


@pytest.mark.parametrize("value", NOT_JSON, ids=["nan", "inf", "nested-minus-inf"])
def test_nan_and_infinity_are_refused_before_any_request(nats_url, run, value):
    async def body():
        watcher = await nats.connect(nats_url)
        sent = []

        async def record(msg):
            sent.append(msg.subject)

        await watcher.subscribe(">", cb=record)  # every message anyone sends
        await watcher.flush()
        async with Client(nats_url) as client:
            calls = (client.start("wf", value), client.signal("r1", "go", value), client.publish_event("go", value))
            for call in calls:
                with pytest.raises(InvalidInput, match="JSON has no NaN or Infinity"):
                    await call
        await watcher.flush()  # after the client's close: anything it sent has arrived
        await watcher.close()
        return sent

    assert run(body()) == []
