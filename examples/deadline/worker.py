"""Workers for examples/deadline: gather -> render, where render may be slow.

Run with:  dagnats worker examples/deadline/worker.py
"""

import time

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Job(msgspec.Struct):
    pages: int


@w.task("deadline-gather")
def gather(ctx: TaskContext, job: Job) -> int:
    return job.pages


@w.task("deadline-render")
def render(ctx: TaskContext, pages: int) -> str:
    time.sleep(pages)  # one second per page
    return f"rendered {pages} pages"


if __name__ == "__main__":
    w.run()
