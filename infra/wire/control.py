"""The control plane's contract: one request/reply per operation on ``dagnats.api.<op>``.

Each operation's request body is a Struct decoded once by the engine (a body
that does not fit is an ``InvalidRequest`` naming the field). A reply is
``{"result": value}`` or ``{"error": message, "kind": class name, "attrs":
{...}}``; the client raises the same DagnatsError class with the same
attributes (``err.run_id``, ``err.status``, ...).

Answers that can outgrow the server's max payload are paged: events from a
sequence (``RunEvents.after_seq``), runs by cursor (``ListRuns.cursor``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from dagnats.domain import errors as errs
from dagnats.domain.values import MAX_DEPTH

from .names import API_PREFIX


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of request bodies."""


class Empty(Request, frozen=True):
    pass


class WorkflowRef(Request, frozen=True):
    name: str = ""


class RegisterWorkflow(Request, frozen=True):
    definition: Any = None


class StartRun(Request, frozen=True):
    workflow: str = ""
    input: Any = None
    run_id: str | None = None
    trace_parent: str | None = None
    idempotency_key: Any = None
    trace_state: str | None = None
    baggage: str | None = None
    # The caller made ``run_id`` up for this start (a random id no other start uses, as
    # the engine's own): the run is new, so nothing recorded under it is looked for.
    new_run: bool = False


class RunRef(Request, frozen=True):
    run_id: str = ""


class CancelRun(Request, frozen=True):
    run_id: str = ""
    reason: str | None = None
    # How long to wait for the run to end, so the answer says how it ended.
    wait: float = 5.0


class SignalRun(Request, frozen=True):
    run_id: str = ""
    name: str = ""
    data: Any = None


class DecideApproval(Request, frozen=True):
    """Approve (a comment, optional data: the step's output) or reject (a reason) a step
    waiting for an approval. ``token``: the one its request carried (operators need none)."""

    run_id: str = ""
    step_id: str = ""
    comment: str = ""
    reason: str = ""
    data: Any = None
    by: str = ""
    token: str | None = None


class RunEvents(Request, frozen=True):
    run_id: str = ""
    after_seq: int = 0
    limit: int = 1000


class ListRuns(Request, frozen=True):
    workflow: str | None = None
    status: str | None = None
    limit: int = 100
    cursor: str | None = None
    since: str | None = None  # RFC3339: created at or after
    until: str | None = None  # RFC3339: created at or before


class ListLimits(Request, frozen=True):
    prefix: str = ""  # only keys starting with this (e.g. "task.charge")
    queue: int = 20  # at most this many of each queue's waiters, head first
    after: str = ""  # the page after this key (keys in order; the previous answer's "next")


class ListDeadLetters(Request, frozen=True):
    run_id: str | None = None
    workflow: str | None = None
    since: str | None = None  # RFC3339: stored at or after
    until: str | None = None  # RFC3339: stored at or before
    limit: int = 100


class DeadLetterRef(Request, frozen=True):
    seq: int = 0
    by: str = ""  # who replays (recorded in the run's history)


class ReplayDeadLetters(Request, frozen=True):
    """Every dead letter of a run, or of a workflow stored between ``since`` and ``until``."""

    run_id: str | None = None
    workflow: str | None = None
    since: str | None = None
    until: str | None = None
    by: str = ""


MAX_PAGE = 10_000

# op -> the request it takes
OPERATIONS: dict[str, type[Request]] = {
    "workflow.register": RegisterWorkflow,
    "workflow.list": Empty,
    "workflow.get": WorkflowRef,
    "workflow.delete": WorkflowRef,
    "run.start": StartRun,
    "run.get": RunRef,
    "run.inspect": RunRef,
    "run.events": RunEvents,
    "run.list": ListRuns,
    "run.cancel": CancelRun,
    "run.pause": RunRef,
    "run.resume": RunRef,
    "run.delete": RunRef,
    "run.signal": SignalRun,
    "run.approve": DecideApproval,
    "run.reject": DecideApproval,
    "limits": ListLimits,
    "status": Empty,
    "dlq.list": ListDeadLetters,
    "dlq.show": DeadLetterRef,
    "dlq.replay": DeadLetterRef,
    "dlq.replay_many": ReplayDeadLetters,
    "dlq.discard": DeadLetterRef,
}


def subject(op: str) -> str:
    return f"{API_PREFIX}.{op}"


_ENCODER = msgspec.json.Encoder()


def decode_request(op: str, data: bytes) -> Request:
    """The body of ``op`` (raises InvalidRequest naming what is wrong)."""
    kind = OPERATIONS.get(op)
    if kind is None:
        raise errs.InvalidRequest(op, "unknown operation")
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.ValidationError as err:
        raise errs.InvalidRequest(op, str(err)) from None
    except msgspec.DecodeError as err:
        raise errs.InvalidRequest(op, f"not valid JSON: {err}") from None
    except RecursionError:  # the decoder recurses per level; values may nest MAX_DEPTH deep
        raise errs.InvalidRequest(op, f"nested too deeply (a value may nest at most {MAX_DEPTH} levels)") from None


def encode_result(value: Any) -> bytes:
    return _ENCODER.encode({"result": value})


def encode_error(err: errs.DagnatsError) -> bytes:
    return _ENCODER.encode({"error": str(err), "kind": type(err).__name__, "attrs": _attrs(err)})


def _attrs(err: Exception) -> dict[str, Any]:
    attrs = {}
    for name, value in vars(err).items():
        try:
            _ENCODER.encode(value)
        except (TypeError, ValueError, OverflowError):
            continue
        attrs[name] = value
    return attrs


_ERRORS = {
    name: cls for name, cls in vars(errs).items() if isinstance(cls, type) and issubclass(cls, errs.DagnatsError)
}


class RemoteError(errs.DagnatsError):
    """An engine error whose class this client does not know."""


def decode_reply(data: bytes) -> Any:
    """The result of a reply, or the engine's error raised as the same class."""
    reply = msgspec.json.decode(data)
    if "error" not in reply:
        return reply.get("result")
    cls = _ERRORS.get(reply.get("kind", ""), RemoteError)
    err = cls.__new__(cls)
    Exception.__init__(err, reply["error"])
    err.__dict__.update(reply.get("attrs") or {})
    raise err
