"""Workers for examples/agent-loop: gather (an agent_loop) -> summarize.

Run with:  dagnats worker examples/agent-loop/worker.py

Each iteration reads one source. The notes so far live in the step's
checkpoint, so a retried iteration (or the next one) starts from them.
Returning Continue(data) ends the iteration and queues the next one with
``data`` as its input; returning a plain value ends the loop.
"""

import msgspec

from dagnats.infra.worker import Continue, TaskContext, Worker

w = Worker()

SOURCES = ["wiki", "papers", "forum", "blog", "news", "books", "talks"]


class Topic(msgspec.Struct):
    topic: str
    sources: int = 3


@w.task("loop-gather")
def gather(ctx: TaskContext, job: Topic):
    notes = ctx.last_checkpoint() or []
    if len(notes) == 1 and ctx.attempt == 2:
        # The second iteration's first try fails: its retry starts from the checkpoint.
        raise TimeoutError(f"{SOURCES[1]} did not answer")
    source = SOURCES[len(notes)]
    notes.append(f"{ctx.metadata.get('role', 'agent')} read {source} on {job.topic} (iteration {ctx.iteration})")
    ctx.checkpoint(notes)
    if len(notes) < job.sources:
        return Continue({"topic": job.topic, "sources": job.sources})
    return {"topic": job.topic, "notes": notes}


@w.task("loop-summarize")
def summarize(ctx: TaskContext, research: dict) -> str:
    return f"{research['topic']}: {len(research['notes'])} notes"


if __name__ == "__main__":
    w.run()
