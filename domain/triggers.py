"""Triggers: what starts a run from outside — a clock, a webhook, a NATS subject, an HTTP request.

A ``Trigger`` is the record the ``triggers`` KV keeps (``dagnats trigger
create``, ``POST /triggers``); a ``TriggerDef`` is the same thing declared in
a workflow definition's ``triggers[]``, where ``workflow_id`` may be left out
(it is the workflow's name) and a different one is an error. Each has exactly
one kind (``cron``, ``webhook``, ``subject`` or ``http``) and may debounce
bursts of fires (``debounce.py``), except a cron trigger, which fires once per
occurrence anyway, and an http trigger, whose caller waits for its own run.

Routes are exact: a webhook answers at ``/hooks/NAME``, an http trigger at
``/api/SEG[/SEG...]`` for one method; segments are identifiers, so no ``*``,
``..`` or ``%2e`` can reach a route or a subject. Two triggers may not share a
route; a trigger re-declared under its own id replaces itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import msgspec

from .durations import HOUR, parse_duration
from .errors import InvalidDuration, InvalidRequest
from .identifiers import is_identifier
from .issues import Issues, identifier_issues, path_issues, quote
from .schedules import cron_problem

MAX_TRIGGERS_PER_WORKFLOW = 50
MIN_SECRET = 16
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_HTTP_TIMEOUT_MS = 30_000
MAX_HTTP_TIMEOUT_MS = 300_000
DEFAULT_HTTP_MAX_BODY = 1 << 20
MAX_HTTP_MAX_BODY = 1 << 20
MAX_ROUTE_SEGMENTS = 8
MAX_DEBOUNCE = 7 * 24 * HOUR
HOOK_RE = re.compile(r"^/hooks/[A-Za-z0-9_-]{1,64}$")
API_ROUTE_RE = re.compile(r"^/api(/[A-Za-z0-9_-]{1,64}){1,8}$")  # at most MAX_ROUTE_SEGMENTS
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.([A-Za-z0-9_-]+|\*))*(\.>)?$")
RESERVED_SUBJECTS = ("history.", "inbox.", "schedule.", "task.", "dead.", "event.", "dagnats.", "$")


class _Kind(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Cron(_Kind, frozen=True):
    expression: str
    timezone: str = "UTC"


class Webhook(_Kind, frozen=True):
    path: str
    secret: str | None = None


class Subject(_Kind, frozen=True):
    subject: str


class HttpRoute(_Kind, frozen=True):
    """``path`` under ``/api/``, answered by the run's ``respond`` step within ``timeout_ms``."""

    path: str
    method: str = "POST"
    timeout_ms: int = DEFAULT_HTTP_TIMEOUT_MS
    max_body_bytes: int = DEFAULT_HTTP_MAX_BODY
    secret: str | None = None
    idempotency_header: str | None = None


class Debounce(_Kind, frozen=True):
    """Fires within ``period`` of each other (per ``key``, a dot path into the fire's data)
    become one run, started ``period`` after the last of them, or ``timeout`` after the
    first at the latest. Durations as in a definition ("30s" or nanoseconds)."""

    DURATIONS: ClassVar[tuple[str, ...]] = ("period", "timeout")
    period: int | str
    timeout: int | str = 0
    key: str = ""

    def __post_init__(self) -> None:
        for name in self.DURATIONS:
            raw = getattr(self, name)
            if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
                continue
            try:
                msgspec.structs.force_setattr(self, name, parse_duration(raw))
            except InvalidDuration as err:
                raise ValueError(f"`{name}`: {err}") from None


class _Kinds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    cron: Cron | None = None
    webhook: Webhook | None = None
    subject: Subject | None = None
    http: HttpRoute | None = None
    debounce: Debounce | None = None

    @property
    def kind(self) -> str:
        return next((k for k in KINDS if getattr(self, k) is not None), "none")


KINDS = ("cron", "webhook", "subject", "http")


class Trigger(_Kinds, frozen=True):
    """A trigger as stored in the ``triggers`` KV (key: ``id``)."""

    id: str
    workflow: str
    created_at: str = ""
    # Declared in the workflow's definition: registering it again replaces or removes it.
    declared: bool = False


class TriggerDef(_Kinds, frozen=True):
    """A trigger in a workflow definition's ``triggers[]``."""

    id: str
    workflow_id: str = ""


SECRET_SHOWN = "(set)"


def redacted(t: Trigger) -> Trigger:
    """The trigger as shown to anyone who lists or reads it: a secret is ``"(set)"``."""
    if t.webhook is not None and t.webhook.secret:
        t = msgspec.structs.replace(t, webhook=msgspec.structs.replace(t.webhook, secret=SECRET_SHOWN))
    if t.http is not None and t.http.secret:
        t = msgspec.structs.replace(t, http=msgspec.structs.replace(t.http, secret=SECRET_SHOWN))
    return t


def route(t: _Kinds) -> str | None:
    """The HTTP route a trigger answers at (``POST /hooks/x``, ``GET /api/a/b``), if any."""
    if t.webhook is not None:
        return f"POST {t.webhook.path}"
    if t.http is not None:
        return f"{t.http.method} {t.http.path}"
    return None


def trigger_issues(t: _Kinds) -> Issues:
    """Every problem with one trigger (not its id or workflow: the caller names those)."""
    kinds = [k for k in KINDS if getattr(t, k) is not None]
    if len(kinds) != 1:
        yield f"a trigger has exactly one of {', '.join(KINDS)} (got {len(kinds)})"
    if t.cron is not None and (problem := cron_problem(t.cron.expression, t.cron.timezone)):
        yield f"cron: {problem}"
    if t.webhook is not None:
        if not HOOK_RE.match(t.webhook.path):
            yield f"webhook.path: {quote(t.webhook.path)} must look like /hooks/NAME (letters, digits, _ -)"
        yield from _secret("webhook.secret", t.webhook.secret)
    if t.subject is not None:
        s = t.subject.subject
        if not SUBJECT_RE.match(s) or s.startswith(RESERVED_SUBJECTS):
            yield f"subject: {quote(s)} is not a NATS subject this engine may listen on"
    if t.http is not None:
        yield from _http_issues(t.http)
    if t.debounce is not None:
        yield from _debounce_issues(t)


def _secret(field: str, secret: str | None) -> Issues:
    if secret is not None and len(secret) < MIN_SECRET:
        yield f"{field}: must be at least {MIN_SECRET} characters (got {len(secret)})"


def _http_issues(h: HttpRoute) -> Issues:
    if not API_ROUTE_RE.match(h.path):
        yield (
            f"http.path: {quote(h.path)} must look like /api/NAME[/NAME...] (at most {MAX_ROUTE_SEGMENTS} "
            "segments of letters, digits, _ -; an exact route, no wildcards)"
        )
    if h.method not in HTTP_METHODS:
        yield f"http.method: {quote(h.method)} is not allowed (one of {', '.join(HTTP_METHODS)})"
    if not 0 < h.timeout_ms <= MAX_HTTP_TIMEOUT_MS:
        yield f"http.timeout_ms: must be between 1 and {MAX_HTTP_TIMEOUT_MS} (got {h.timeout_ms})"
    if not 0 < h.max_body_bytes <= MAX_HTTP_MAX_BODY:
        yield f"http.max_body_bytes: must be between 1 and {MAX_HTTP_MAX_BODY} (got {h.max_body_bytes})"
    yield from _secret("http.secret", h.secret)
    if h.idempotency_header is not None and not HEADER_RE.match(h.idempotency_header):
        yield f"http.idempotency_header: {quote(h.idempotency_header)} is not a header name (letters, digits, -)"


def _debounce_issues(t: _Kinds) -> Issues:
    d = t.debounce
    assert d is not None
    if t.cron is not None or t.http is not None:
        yield f"debounce: not allowed on {t.kind} triggers (only webhook and subject triggers debounce)"
    period, timeout = int(d.period), int(d.timeout)
    if not 0 < period <= MAX_DEBOUNCE:
        yield "debounce.period: must be more than 0 and at most 7 days"
    if timeout and not period <= timeout <= MAX_DEBOUNCE:
        yield "debounce.timeout: must be at least the period and at most 7 days"
    if d.key:
        yield from path_issues("debounce.key", d.key)


def check_trigger(t: Trigger) -> Trigger:
    """``t`` if it is well formed, else InvalidRequest listing every problem."""
    problems = [*identifier_issues("id", t.id), *identifier_issues("workflow", t.workflow), *trigger_issues(t)]
    if problems:
        raise InvalidRequest("trigger", "; ".join(problems))
    return t


def route_conflicts(new: Iterable[Trigger], existing: Iterable[Trigger]) -> list[str]:
    """A route of ``new`` that a trigger with another id already answers at."""
    taken = {r: o.id for o in existing if (r := route(o)) is not None}
    return [
        f"route conflict: {r} already registered by trigger {quote(taken[r])}"
        for t in new
        if (r := route(t)) is not None and r in taken and taken[r] != t.id
    ]


# ---- triggers[] in a workflow definition --------------------------------------------------


def declared_trigger_issues(workflow: str, defs: tuple[TriggerDef, ...]) -> list[str]:
    """Every problem with a definition's ``triggers[]``, each naming the trigger."""
    issues: list[str] = []
    if len(defs) > MAX_TRIGGERS_PER_WORKFLOW:
        issues.append(f"triggers: {len(defs)} is more than the maximum of {MAX_TRIGGERS_PER_WORKFLOW}")
    seen: set[str] = set()
    for index, d in enumerate(defs):
        label = f"triggers[{index}]" + (f" {quote(d.id)}" if is_identifier(d.id) else "")
        issues += [f"{label}: {issue}" for issue in _declared_issues(workflow, d, seen)]
        seen.add(d.id)
    if not issues:
        issues += [f"triggers: {c}" for c in _conflicts_among(declared_triggers(workflow, defs))]
    return issues


def _declared_issues(workflow: str, d: TriggerDef, seen: set[str]) -> Iterator[str]:
    yield from identifier_issues("id", d.id)
    if d.id in seen:
        yield f"id: {quote(d.id)} is declared more than once"
    if d.workflow_id and d.workflow_id != workflow:
        yield f"workflow_id: {quote(d.workflow_id)} is not this workflow ({quote(workflow)}); leave it out"
    yield from trigger_issues(d)


def _conflicts_among(triggers: list[Trigger]) -> Iterator[str]:
    for index, t in enumerate(triggers):
        yield from route_conflicts([t], triggers[:index])


def declared_triggers(workflow: str, defs: Iterable[TriggerDef]) -> list[Trigger]:
    """The records a definition's ``triggers[]`` becomes."""
    return [
        Trigger(
            id=d.id,
            workflow=workflow,
            enabled=d.enabled,
            cron=d.cron,
            webhook=d.webhook,
            subject=d.subject,
            http=d.http,
            debounce=d.debounce,
            declared=True,
        )
        for d in defs
    ]


def trigger_from_object(obj: Any) -> Trigger:
    """A stored record or request body as a Trigger (InvalidRequest naming the field)."""
    try:
        return msgspec.convert(obj, Trigger)
    except msgspec.ValidationError as err:
        raise InvalidRequest("trigger", str(err)) from None
