"""Workers for examples/sleep: welcome -> (sleep) -> follow-up, and the reminder of wake-at.

Run with:  dagnats worker examples/sleep/worker.py
"""

from datetime import UTC, datetime

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Signup(msgspec.Struct):
    user: str


class FollowUp(msgspec.Struct):
    user: str


def now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


@w.task("sleep-welcome")
def welcome(ctx: TaskContext, signup: Signup) -> dict:
    return {"user": signup.user, "sent_at": now()}


@w.task("sleep-follow-up")
def follow_up(ctx: TaskContext, job: FollowUp) -> str:
    return f"follow-up sent to {job.user} at {now()}"


@w.task("sleep-remind")
def remind(ctx: TaskContext) -> str:
    return f"reminded at {now()}"


if __name__ == "__main__":
    w.run()
