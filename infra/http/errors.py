"""HTTP errors: every refusal is a 4xx with ``{"error": code, "message": text}``.

``ApiError`` is raised by the HTTP layer itself (bad JSON, wrong content
type, a body too large, a bad token); a ``DagnatsError`` from the control
plane is mapped by its class to a status, and its code is the class name in
snake_case (``RunNotFound`` -> ``run_not_found``), so the same error reads
the same on the CLI and over HTTP.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from dagnats.domain import errors as errs


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.status, self.code, self.message, self.extra = status, code, message, extra
        super().__init__(message)


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every 4xx and 5xx answer."""

    error: str
    message: str


# Most specific first: the first class an error is an instance of decides its status.
_STATUS: list[tuple[type[Exception], int]] = [
    (errs.InvalidApprovalToken, 403),
    (errs.WorkflowNotFound, 404),
    (errs.RunNotFound, 404),
    (errs.DeadLetterNotFound, 404),
    (errs.StepNotFound, 404),
    (errs.PayloadTooLarge, 413),
    (errs.InvalidRunState, 409),
    (errs.NotWaitingForApproval, 409),
    (errs.ApprovalAlreadyDecided, 409),
    (errs.ReplayRefused, 409),
    (errs.SingletonConflict, 409),
    (errs.RunAlreadyStarted, 409),
    (errs.WorkflowInvalid, 422),
    (errs.InvalidInput, 422),
    (errs.UnsupportedStepType, 422),
    (errs.ReplyTooLarge, 422),
    (errs.Unavailable, 503),
    (TimeoutError, 503),
    (LookupError, 404),
]


def error_code(err: Exception) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__).lower()


def from_dagnats(err: errs.DagnatsError) -> ApiError:
    """The HTTP answer for an error the control plane raised (400 unless it says more)."""
    status = next((code for cls, code in _STATUS if isinstance(err, cls)), 400)
    return ApiError(status, error_code(err), str(err))
