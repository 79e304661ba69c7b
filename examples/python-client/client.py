"""Drive dagnats from Python: register a workflow, start a run, wait, inspect.

    python examples/python-client/client.py             # the async Client
    python examples/python-client/client.py --sync      # the same with SyncClient

Connects to DAGNATS_NATS_URL (default nats://127.0.0.1:4222).
"""

import asyncio
import sys
from pathlib import Path

from dagnats.domain.errors import InvalidRunState, RunNotFound
from dagnats.domain.validate import parse_and_validate
from dagnats.infra.client import Client, SyncClient

HERE = Path(__file__).parent
ORDER = {
    "customer": "ACME",
    "lines": [
        {"item": "widget", "qty": 3, "unit_price": 2.5},
        {"item": "gadget", "qty": 1, "unit_price": 10.0},
    ],
}


async def main() -> None:
    # Validate locally first: the same checks as `dagnats workflow register`.
    definition = parse_and_validate((HERE / "workflow.json").read_bytes(), "workflow.json")
    async with Client() as client:
        registered = await client.register(definition)
        print("registered:", registered)

        run_id = await client.start("invoice", ORDER)
        print("started:", run_id)

        done = await client.wait(run_id, timeout=30)  # the run's status view
        print("status:", done["status"])
        print("output:", done["output"])

        for event in await client.events(run_id):
            print(f"  {event['seq']:>3}  {event['type']:<20} {event['step_id'] or ''}")

        view = await client.inspect(run_id)
        for step_id, step in view["steps"].items():
            print(f"  {step_id}: queued {step['queue_seconds']}s, ran {step['exec_seconds']}s")

        try:
            await client.cancel(run_id)
        except InvalidRunState as err:  # the engine's error, as the same class
            print("cancel refused:", err)

        await client.delete(run_id)
        try:
            await client.status(run_id)
        except RunNotFound as err:
            print("after delete:", err)


def main_sync() -> None:
    definition = parse_and_validate((HERE / "workflow.json").read_bytes(), "workflow.json")
    with SyncClient() as client:  # every Client method, blocking
        client.register(definition)
        run_id = client.start("invoice", ORDER)
        done = client.wait(run_id, timeout=30)
        print(run_id, done["status"], done["output"])
        print([r["run_id"] for r in client.runs(workflow="invoice", status="completed", limit=5)])


if __name__ == "__main__":
    main_sync() if "--sync" in sys.argv else asyncio.run(main())
