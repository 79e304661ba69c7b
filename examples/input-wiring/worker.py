"""Workers for examples/input-wiring.

Run with:  dagnats worker examples/input-wiring/worker.py
"""

import msgspec

from dagnats.infra.worker import Permanent, TaskContext, Worker

w = Worker()


class Signup(msgspec.Struct):
    user_id: int
    email: str
    has_avatar: bool = True


class Mail(msgspec.Struct):
    to: str
    plan: str
    avatar: str
    template: str


@w.task("wiring-profile")
def profile(ctx: TaskContext, signup: Signup) -> dict:
    return {"user": {"id": signup.user_id, "email": signup.email}, "plan": "pro"}


@w.task("wiring-avatar")
def avatar(ctx: TaskContext, signup: Signup) -> dict:
    if not signup.has_avatar:
        raise Permanent(f"user {signup.user_id} has no avatar")
    return {"url": f"https://example.com/avatars/{signup.user_id}.png"}


@w.task("wiring-mail")
def mail(ctx: TaskContext, m: Mail) -> str:
    # The input is exactly the template with each $ref replaced.
    return f"sent {m.template} to {m.to} ({m.plan}) with {m.avatar}"


@w.task("wiring-badge")
def badge(ctx: TaskContext, avatar: dict) -> str:
    return f"badge from {avatar['url']}"


@w.task("wiring-audit")
def audit(ctx: TaskContext, record: dict) -> dict:
    return record


if __name__ == "__main__":
    w.run()
