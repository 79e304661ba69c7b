"""Workers for examples/saga: book-flight -> book-hotel -> charge, with compensations.

Run with:  dagnats worker examples/saga/worker.py
"""

from typing import Any

from dagnats.infra.worker import Permanent, TaskContext, Worker

w = Worker()


@w.task("trip-book-flight")
def book_flight(ctx: TaskContext, trip: dict) -> dict:
    return {"flight": f"FL-{trip['to']}", "card": trip["card"], "fail_undo": trip.get("fail_undo", False)}


@w.task("trip-book-hotel")
def book_hotel(ctx: TaskContext, flight: dict) -> dict:
    return {**flight, "hotel": "HOTEL-42"}


@w.task("trip-charge")
def charge(ctx: TaskContext, booking: dict) -> str:
    if booking["card"] == "declined":
        raise Permanent("card declined")  # no retries: the saga starts at once
    return "charged"


# A compensation step receives what it must undo:
# {"original_step", "original_output", "trigger_step", "trigger_error"}.


@w.task("trip-cancel-hotel")
def cancel_hotel(ctx: TaskContext, undo: dict[str, Any]) -> str:
    return (
        f"cancelled {undo['original_output']['hotel']} because {undo['trigger_step']} failed: {undo['trigger_error']}"
    )


@w.task("trip-cancel-flight")
def cancel_flight(ctx: TaskContext, undo: dict[str, Any]) -> str:
    if undo["original_output"]["fail_undo"]:
        raise Permanent("airline refuses the cancellation")
    return f"cancelled {undo['original_output']['flight']}"


if __name__ == "__main__":
    w.run()
