"""The project's error classes: one root, specific subclasses that carry ids.

Each subclass also inherits the built-in that fits (ValueError for bad
input, LookupError for unknown ids) and builds its own message, so callers
can catch by meaning and print ``str(err)`` as the one line a user sees.
"""

from __future__ import annotations


class DagnatsError(Exception):
    """Root of every error dagnats raises on purpose."""


class InvalidIdentifier(DagnatsError, ValueError):
    def __init__(self, kind: str, value: str) -> None:
        self.kind, self.value = kind, value
        super().__init__(
            f"invalid {kind} {value!r}: must match ^[A-Za-z0-9_-]{{1,64}}$ "
            "(letters, digits, '_' and '-' only; no '.', '*', '>' or spaces)"
        )


class InvalidDuration(DagnatsError, ValueError):
    def __init__(self, value: object, reason: str = "") -> None:
        self.value = value
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"invalid duration {value!r}{detail} "
            '(use a Go-style string such as "30s", "1m30s", "250ms" or integer nanoseconds)'
        )


class WorkflowInvalid(DagnatsError, ValueError):
    """A definition failed validation; ``issues`` lists every problem found."""

    def __init__(self, workflow: str, issues: list[str]) -> None:
        self.workflow, self.issues = workflow, list(issues)
        shown = "; ".join(self.issues)
        super().__init__(f"invalid workflow {workflow!r}: {shown}")


class DefinitionDecodeError(DagnatsError, ValueError):
    """The definition document is not valid JSON or does not fit the schema."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")


class WorkflowNotFound(DagnatsError, LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"workflow {name!r} not found")


class RunNotFound(DagnatsError, LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found")


class InvalidInput(DagnatsError, ValueError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid input: {reason}")


class PayloadTooLarge(DagnatsError, ValueError):
    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what, self.size, self.limit = what, size, limit
        super().__init__(f"{what} is {size} bytes, larger than the limit of {limit} bytes")


class InvalidRunState(DagnatsError, ValueError):
    """An operation is not allowed in the run's current status."""

    def __init__(self, run_id: str, status: str, operation: str) -> None:
        self.run_id, self.status, self.operation = run_id, status, operation
        super().__init__(f"cannot {operation} run {run_id}: it is {status}")


class DeadLetterNotFound(DagnatsError, LookupError):
    def __init__(self, seq: int) -> None:
        self.seq = seq
        super().__init__(f"no dead letter {seq} (see `dagnats dlq list`)")


class ReplayRefused(DagnatsError, ValueError):
    """A dead letter whose step the run cannot take up again (see domain/replays.py)."""

    def __init__(self, seq: int, run_id: str, step_id: str, reason: str) -> None:
        self.seq, self.run_id, self.step_id, self.reason = seq, run_id, step_id, reason
        super().__init__(f"cannot replay dead letter {seq}: {reason}")


class TaskAlreadyRegistered(DagnatsError, ValueError):
    def __init__(self, task: str) -> None:
        self.task = task
        super().__init__(f"task {task!r} already has a handler in this worker")


class WorkerLoadError(DagnatsError, ValueError):
    """A worker file could not be imported, or does not define exactly one Worker."""

    def __init__(self, path: str, names: list[str] | None = None, cause: str = "") -> None:
        self.path, self.names, self.cause = path, list(names or []), cause
        if cause:
            message = f"cannot load {path}: {cause}"
        elif not self.names:
            message = f"no Worker found in {path}"
        else:
            message = f"several Worker objects in {path}: {', '.join(self.names)}"
        super().__init__(message)


class SingletonConflict(DagnatsError, ValueError):
    """A singleton workflow (mode skip) already has an active run."""

    def __init__(self, workflow: str, key: str, active_run: str) -> None:
        self.workflow, self.key, self.active_run = workflow, key, active_run
        scope = f" for key {key!r}" if key else ""
        super().__init__(
            f"workflow {workflow!r} already has an active run{scope}: {active_run} "
            "(singleton mode skip refuses a second one)"
        )


class BuilderError(DagnatsError, ValueError):
    """A WorkflowBuilder was misused; raised at the offending call, not at build()."""

    def __init__(self, workflow: str, reason: str, step_id: str = "") -> None:
        self.workflow, self.reason, self.step_id = workflow, reason, step_id
        super().__init__(reason)


class UnsupportedStepType(DagnatsError, ValueError):
    """The workflow uses a step type this engine validates but does not run yet."""

    def __init__(self, workflow: str, reason: str) -> None:
        self.workflow = workflow
        super().__init__(f"cannot start workflow {workflow!r}: {reason}")


class Unavailable(DagnatsError, ConnectionError):
    """NATS or the engine did not answer in time; the same request may succeed later."""


class InvalidRequest(DagnatsError, ValueError):
    """A control-plane request whose body does not fit its operation."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation, self.reason = operation, reason
        super().__init__(f"invalid {operation} request: {reason}")


class ReplyTooLarge(DagnatsError, ValueError):
    """An answer that would not fit in one NATS message (ask for a page, or less)."""

    def __init__(self, what: str, size: int, limit: int, hint: str = "") -> None:
        self.what, self.size, self.limit = what, size, limit
        super().__init__(
            f"the answer to {what} is {size} bytes, over the limit of {limit} bytes" + (f"; {hint}" if hint else "")
        )


class RunAlreadyStarted(DagnatsError, ValueError):
    """A start named a run id that is already taken by a different run."""

    def __init__(self, run_id: str, workflow: str, reason: str = "with a different workflow or input") -> None:
        self.run_id, self.workflow = run_id, workflow
        super().__init__(f"run {run_id} is already started ({workflow}) {reason}")


class WrongLastSequence(DagnatsError, RuntimeError):
    """Someone else appended to the run's history: refold and decide again.

    ``duplicate``: the store already holds a record under this message id.
    """

    def __init__(self, message: str, duplicate: bool = False) -> None:
        self.duplicate = duplicate
        super().__init__(message)


class RecordTooLarge(DagnatsError, ValueError):
    """A history record that would not fit in one NATS message."""

    def __init__(self, run_id: str, size: int, limit: int) -> None:
        self.run_id, self.size, self.limit = run_id, size, limit
        super().__init__(f"a history record of run {run_id} would be {size} bytes, over the limit of {limit} bytes")


class Permanent(DagnatsError):
    """Raise from a handler to fail the step at once, without retries."""


class RateLimited(DagnatsError):
    """Raise from a handler to have the engine retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(message)


class StepNotFound(DagnatsError, LookupError):
    def __init__(self, run_id: str, step_id: str) -> None:
        self.run_id, self.step_id = run_id, step_id
        super().__init__(f"run {run_id} has no step {step_id!r}")


class NotWaitingForApproval(DagnatsError, ValueError):
    """An approve or reject for a step that is not waiting for one (or no longer)."""

    def __init__(self, run_id: str, step_id: str, status: str) -> None:
        self.run_id, self.step_id, self.status = run_id, step_id, status
        super().__init__(f"step {step_id} of run {run_id} is not waiting for an approval (it is {status})")


class ApprovalAlreadyDecided(DagnatsError, ValueError):
    def __init__(self, run_id: str, step_id: str) -> None:
        self.run_id, self.step_id = run_id, step_id
        super().__init__(f"step {step_id} of run {run_id} was already approved or rejected")


class InvalidApprovalToken(DagnatsError, PermissionError):
    def __init__(self, run_id: str, step_id: str) -> None:
        self.run_id, self.step_id = run_id, step_id
        super().__init__(f"the approval token for step {step_id} of run {run_id} is wrong or has expired")


class SignalTimeout(DagnatsError, TimeoutError):
    """A handler's wait for a signal ended without one."""

    def __init__(self, run_id: str, step_id: str, name: str, timeout: float) -> None:
        self.run_id, self.step_id, self.name, self.timeout = run_id, step_id, name, timeout
        super().__init__(f"run {run_id} step {step_id}: signal {name!r} did not arrive within {timeout:g} s")
