"""The REST API's request and answer bodies: msgspec Structs, decoded strictly.

Bodies forbid unknown fields (a typo is a 400 naming it, not a silent
default); queries are lenient about extras. The same types feed the OpenAPI
document (``endpoints.openapi_document``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from dagnats.domain.state import RunStatus

from ..reactive.views import LISTED_STATUSES

Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Limit = Annotated[int, Meta(ge=1, le=10_000)]
Seconds = Annotated[float, Meta(ge=0, le=60)]
# A run status (a DAG run's or a reactive execution's; for bulk filters a DAG run's or "all"):
# the document lists them, as the engine does.
Status = Annotated[str, Meta(pattern="^(" + "|".join(LISTED_STATUSES) + ")$")]
StatusOrAll = Annotated[str, Meta(pattern="^(" + "|".join([*(s.value for s in RunStatus), "all"]) + ")$")]


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Query(msgspec.Struct, frozen=True):
    pass


# ---- workflows -------------------------------------------------------------------------


class Registered(msgspec.Struct, frozen=True):
    status: str
    name: str
    action: str
    steps: int
    triggers: list[str] = []


class Deleted(msgspec.Struct, frozen=True):
    deleted: bool
    name: str = ""
    run_id: str = ""


# ---- runs ------------------------------------------------------------------------------


class StartRun(Body, frozen=True):
    workflow: Identifier
    input: Any = None
    run_id: Identifier | None = None
    idempotency_key: str | None = None
    # RFC3339: start the run then, not now (a scheduled run; see /runs/{run_id}/scheduled).
    run_at: str | None = None
    # W3C trace context (else the request's traceparent / tracestate / baggage headers).
    trace_parent: str | None = None
    trace_state: str | None = None
    baggage: str | None = None


class Started(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    status: str = "started"
    run_at: str | None = None


class ListRuns(Query, frozen=True):
    workflow: Identifier | None = None
    status: Status | None = None
    since: str | None = None
    until: str | None = None
    limit: Limit = 100
    cursor: str | None = None


class RunPage(msgspec.Struct, frozen=True):
    runs: list[dict[str, Any]]
    next: str | None


class EventsQuery(Query, frozen=True):
    after_seq: Annotated[int, Meta(ge=0)] = 0
    limit: Limit = 1000


class EventPage(msgspec.Struct, frozen=True):
    events: list[dict[str, Any]]
    next: int | None


class WaitQuery(Query, frozen=True):
    # Long-poll bound: at most a minute; ask again for longer.
    timeout: Seconds = 30.0
    step: Identifier | None = None


class Waited(msgspec.Struct, frozen=True):
    finished: bool
    run: dict[str, Any]


class Output(msgspec.Struct, frozen=True):
    run_id: str
    status: str
    output: Any = None


class CancelRun(Body, frozen=True):
    reason: str | None = None
    wait: Annotated[float, Meta(ge=0, le=30)] = 5.0


class Approve(Body, frozen=True):
    comment: str = ""
    data: Any = None
    by: str = ""
    token: str | None = None


class Reject(Body, frozen=True):
    reason: str = ""
    by: str = ""
    token: str | None = None


# ---- bulk ------------------------------------------------------------------------------


class BulkStart(Body, frozen=True):
    workflow: Identifier
    inputs: Annotated[list[Any], Meta(max_length=1000)]
    dry_run: bool = False


class BulkStarted(msgspec.Struct, frozen=True):
    run_ids: list[str]
    total: int
    dry_run: bool


class RunFilter(Body, frozen=True):
    workflow: Identifier
    # Which runs: one status, or "all" (cancel: every live run; retry: every failed one).
    status: StatusOrAll | None = None
    since: str | None = None
    until: str | None = None
    dry_run: bool = False


class BulkCancelled(msgspec.Struct, frozen=True):
    cancelled: list[str]
    skipped: list[str]
    total: int
    dry_run: bool


class Retried(msgspec.Struct, frozen=True, omit_defaults=True):
    original_run_id: str
    new_run_id: str | None = None


class BulkRetried(msgspec.Struct, frozen=True):
    retried: list[Retried]
    skipped: list[str]
    total: int
    dry_run: bool


# ---- dead letters, limits --------------------------------------------------------------


class ListDeadLetters(Query, frozen=True):
    run_id: Identifier | None = None
    workflow: Identifier | None = None
    since: str | None = None
    until: str | None = None
    limit: Limit = 100


class DeadLetterPage(msgspec.Struct, frozen=True):
    dead_letters: list[dict[str, Any]]


class Replay(Body, frozen=True):
    by: str = ""


class LimitsQuery(Query, frozen=True):
    prefix: str = ""
    queue: Annotated[int, Meta(ge=0, le=1000)] = 20
    after: str = ""  # the page after this key (the previous answer's "next")


class Limits(msgspec.Struct, frozen=True):
    limits: list[dict[str, Any]]
    next: str | None = None


class Health(msgspec.Struct, frozen=True):
    status: str
