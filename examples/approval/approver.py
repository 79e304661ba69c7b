"""An approver outside the engine: it listens for approval requests and decides them
with the one-time token each request carries.

Run with:  python examples/approval/approver.py [approve|reject]

It prints each request on approvals.deploy-release and approves (or rejects)
it through the Python client, passing the request's token: a wrong or
expired token is refused. Operators with `dagnats run approve` need none.
"""

import asyncio
import json
import os
import sys

import nats

from dagnats.infra.client import Client

SUBJECT = "approvals.deploy-release"


async def main(decision: str) -> None:
    nc = await nats.connect(os.environ.get("DAGNATS_NATS_URL", "nats://127.0.0.1:4222"))
    requests = await nc.subscribe(SUBJECT)
    print(f"listening on {SUBJECT} ...", flush=True)
    async with Client() as client:
        async for msg in requests.messages:
            request = json.loads(msg.data)
            shown = {k: v for k, v in request.items() if k != "token"}
            print("request:", json.dumps(shown), flush=True)
            run_id, step_id, token = request["run_id"], request["step_id"], request["token"]
            if decision == "reject":
                await client.reject(run_id, step_id, "not on a Friday", by="approver.py", token=token)
            else:
                await client.approve(run_id, step_id, "looks good", by="approver.py", token=token)
            print(f"{decision}d step {step_id} of run {run_id}", flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "approve"))
