"""Worker for examples/singleton: one slow task used by both workflows.

Run with:  dagnats worker examples/singleton/worker.py
"""

import time
from typing import Any

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


@w.task("singleton-sync")
def sync(ctx: TaskContext, data: Any) -> str:
    time.sleep(10)
    return f"{ctx.workflow_name} done for {data}"


if __name__ == "__main__":
    w.run()
