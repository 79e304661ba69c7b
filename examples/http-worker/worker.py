"""The Python half of the polyglot workflow: greet_py and sign_py (shout_node is served
by worker.mjs, a Node.js HTTP worker).

Run with:  dagnats worker examples/http-worker/worker.py
"""

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


@w.task("greet_py")
def greet(ctx: TaskContext, name: str) -> str:
    return f"Hello, {name or 'World'}!"


@w.task("sign_py")
def sign(ctx: TaskContext, text: str) -> str:
    return f"{text} -- signed in Python"


if __name__ == "__main__":
    w.run()
