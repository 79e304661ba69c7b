"""Workers for examples/retries: flaky -> slow -> lookup.

Run with:  dagnats worker examples/retries/worker.py
"""

import time
from typing import Any

from dagnats.infra.worker import Permanent, RateLimited, TaskContext, Worker

w = Worker()


@w.task("retries-flaky")
def flaky(ctx: TaskContext, data: Any) -> dict:
    if ctx.attempt < 3:  # any exception but Permanent is retried per the policy
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return {"request": data, "flaky_attempts": ctx.attempt}


@w.task("retries-slow")
def slow(ctx: TaskContext, data: dict) -> dict:
    if ctx.attempt == 1:
        time.sleep(3)  # longer than the step's 1 s timeout: this attempt times out
    return {**data, "slow_attempts": ctx.attempt}


@w.task("retries-lookup")
def lookup(ctx: TaskContext, data: dict) -> dict:
    request = data["request"] or {}
    if request.get("missing"):
        # Fails at once, whatever the policy. The step keeps only the first
        # max_step_error_bytes (64) bytes of this message; the history keeps it all.
        raise Permanent(
            "no such customer: looked in billing, crm and the legacy ledger, "
            "checked spelling variants, found nothing for this request"
        )
    if request.get("busy") and ctx.attempt == 1:
        raise RateLimited("quota exceeded", retry_after=1.5)  # retried after 1.5 s
    return {**data, "lookup_attempts": ctx.attempt}


if __name__ == "__main__":
    w.run()
