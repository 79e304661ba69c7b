"""Workers for examples/approval: build -> (approval) -> deploy.

Run with:  dagnats worker examples/approval/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Release(msgspec.Struct):
    version: str


class Deploy(msgspec.Struct):
    build: dict
    decision: dict


@w.task("approval-build")
def build(ctx: TaskContext, release: Release) -> dict:
    return {"version": release.version, "artifact": f"app-{release.version}.tar.gz"}


@w.task("approval-deploy")
def deploy(ctx: TaskContext, job: Deploy) -> str:
    who = job.decision.get("by") or "an operator"
    note = job.decision.get("comment") or "no comment"
    return f"deployed {job.build['artifact']} (approved by {who}: {note})"


if __name__ == "__main__":
    w.run()
