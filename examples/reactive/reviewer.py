"""The reviewer service of the plan-review example: rejects twice, then approves.

python examples/reactive/reviewer.py [--request ID]
"""

import argparse
import asyncio
import json
import os

import nats


async def main(request: str | None) -> None:
    nc = await nats.connect(os.environ.get("DAGNATS_NATS_URL", "nats://127.0.0.1:4222"))
    seen: dict[str, int] = {}

    async def review(msg):
        task = json.loads(msg.data)
        n = seen[task["execution_id"]] = seen.get(task["execution_id"], 0) + 1
        answer = {"task_id": task["task_id"], "approved": n >= 3, "feedback": f"round {n}: more detail"}
        print(f"review {task['task_id']}: {'approved' if answer['approved'] else 'rejected'}")
        await nc.jetstream().publish(task["callback_subject"], json.dumps(answer).encode())

    async def ended(msg):
        print(f"{msg.subject}: {msg.data.decode()}")

    await nc.subscribe("plans.review", cb=review)
    await nc.subscribe("plans.approved", cb=ended)
    await nc.subscribe("plans.escalated", cb=ended)
    if request:
        await nc.publish("plans.requests", json.dumps({"request_id": request, "plan": "ship it"}).encode())
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--request")
    asyncio.run(main(parser.parse_args().request))
