"""Workers for examples/signals: draft -> review (waits for a signal) -> publish.

Run with:  dagnats worker examples/signals/worker.py

A handler can wait for a named signal of its run, sent with
``dagnats run signal <run-id> <name> <json>``. While it waits, the step shows
as waiting for the signal; a signal sent before the wait is returned at once.
"""

from dagnats.infra.worker import Permanent, TaskContext, Worker

w = Worker()


@w.task("signals-draft")
def draft(ctx: TaskContext, topic: str) -> dict:
    return {"title": f"All about {topic}", "words": 800}


@w.task("signals-review")
def review(ctx: TaskContext, doc: dict) -> dict:
    # Blocks this handler (not the worker) until the signal comes, or raises
    # SignalTimeout after 60 s: a transient failure, retried by the step's policy.
    verdict = ctx.wait_for_signal("verdict", timeout=60)
    if not verdict.get("approved"):
        raise Permanent(f"rejected by {verdict.get('by', 'the reviewer')}: {verdict.get('note', '')}")
    return {**doc, "reviewed_by": verdict.get("by", "?")}


@w.task("signals-publish")
def publish(ctx: TaskContext, doc: dict) -> str:
    return f"published '{doc['title']}' (reviewed by {doc['reviewed_by']})"


if __name__ == "__main__":
    w.run()
