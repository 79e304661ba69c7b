"""Workers for the hello-pipeline tutorial: greet -> uppercase -> reverse.

Run with:  dagnats worker examples/hello-pipeline/worker.py
"""

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


@w.task("greet")
def greet(ctx: TaskContext, name: str) -> str:
    return f"Hello, {name or 'World'}!"


@w.task("uppercase")
def uppercase(ctx: TaskContext, text: str) -> str:
    return text.upper()


@w.task("reverse")
def reverse(ctx: TaskContext, text: str) -> str:
    return text[::-1]


if __name__ == "__main__":
    w.run()
