"""Worker for examples/schemas.

Run with:  dagnats worker examples/schemas/worker.py
"""

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Request(msgspec.Struct):
    n: int
    as_text: bool = False


@w.task("squares-square")
def square(ctx: TaskContext, req: Request) -> int | str:
    result = req.n * req.n
    # as_text returns a string, which the workflow's output_schema refuses.
    return str(result) if req.as_text else result


if __name__ == "__main__":
    w.run()
