"""HTTP request/response triggers: ``/api/...`` starts a run and answers with its ``respond`` step.

One call, in order:

1. the route: the ``http`` trigger whose path is exactly the request's (404
   if none; 405, with ``Allow``, if none for this method; 409 if disabled);
2. the body, at most the trigger's ``max_body_bytes`` (413), and with a
   secret, ``X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (401);
3. a new run id, or with ``idempotency_header`` set and sent, the run a
   previous call with the same value started (idempotency.py): its stored
   answer is replayed, or awaited;
4. subscriptions to ``dagnats.http.response.<run>`` (the respond step's
   message) and ``dagnats.run.<run>.end`` (the run's end), *then* the start,
   so no answer can come before anyone listens;
5. the first of: the response (its status, headers, body; 502
   ``malformed_response`` if it cannot be read), the run failing (500
   ``workflow_failed``) or being cancelled (503 ``workflow_cancelled``), the
   run completing without a response (502 ``no_response``), the caller
   leaving (499 ``client_closed``, logged; the run goes on), or
   ``timeout_ms`` (504 ``workflow_timeout``; the run goes on).

Every answer once a run exists carries ``X-Dagnats-Run-Id``. The run's input
is the trigger envelope with ``data = {method, path, query, headers, body}``
(the body as JSON if it parses, else text; credentials headers left out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from dagnats.domain.errors import DagnatsError, RunNotFound
from dagnats.domain.kinds.respond import body_bytes, response_subject
from dagnats.domain.state import StepStatus, WorkflowRun
from dagnats.domain.triggers import HTTP_METHODS, Trigger

from ..triggers import envelope
from ..wire.notices import decode_notice
from ..wire.subjects import notice_subject
from .endpoints import encode, error_response, read_body
from .errors import ApiError, from_dagnats
from .idempotency import Claims, StoredAnswer
from .triggers import check_signature, store

RUN_ID_HEADER = "X-Dagnats-Run-Id"
# A run that completed may have announced it a moment before its response arrives.
COMPLETED_GRACE = 2.0
log = logging.getLogger("dagnats.http.triggers")
PRIVATE_HEADERS = frozenset({"authorization", "cookie", "x-signature-256"})
HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "content-type"})
FAILED = {"failed": (500, "workflow_failed"), "compensated": (500, "workflow_failed")}
FAILED |= {"compensate_failed": (500, "workflow_failed"), "cancelled": (503, "workflow_cancelled")}


async def api_trigger(request: Request) -> Response:
    """The ASGI endpoint mounted at ``/api/{route:path}``."""
    try:
        return await _serve(request)
    except ApiError as err:
        response = error_response(err)
        if "allowed" in err.extra:
            response.headers["Allow"] = ", ".join(err.extra["allowed"])
        return response
    except DagnatsError as err:
        return error_response(from_dagnats(err))


async def _serve(request: Request) -> Response:
    t = await _route(request)
    assert t.http is not None
    body = await read_body(request, t.http.max_body_bytes)
    if t.http.secret:
        check_signature(t.http.secret, body, request.headers.get("x-signature-256", ""))
    if not t.enabled:
        raise ApiError(409, "trigger_disabled", f"trigger {t.id} is disabled")
    run_id = secrets.token_hex(16)
    key = request.headers.get(t.http.idempotency_header) if t.http.idempotency_header else None
    claims = Claims(request.app.state.plane.js)
    if key:
        earlier = await claims.claim(t.id, key, run_id)
        if earlier:
            return _respond(await _replay(request.app.state, claims, earlier, t.http.timeout_ms / 1000), earlier)
    try:
        answer, final, started = await _run(request, t, run_id, _request_data(request, body))
    except DagnatsError:
        if key:
            await claims.release(t.id, key)
        raise
    if key and started != run_id:
        await claims.point(t.id, key, started)
    if key and final:
        await claims.keep(started, answer)
    return _respond(answer, started)


async def _route(request: Request) -> Trigger:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]  # as sent: "%2e" never matches a route
    triggers = store(request)
    found = [t for t in await triggers.recent() if t.http is not None and t.http.path == path]
    if not any(t.http is not None and t.http.method == request.method for t in found):
        found = [t for t in await triggers.recent(fresh=True) if t.http is not None and t.http.path == path]
    if not found:
        raise ApiError(404, "not_found", f"no http trigger at {path}")
    for t in found:
        if t.http is not None and t.http.method == request.method:
            return t
    allowed = sorted({t.http.method for t in found if t.http is not None})
    message = f"{request.method} is not allowed on {path} (allowed: {', '.join(allowed)})"
    raise ApiError(405, "method_not_allowed", message, allowed=allowed)


def _request_data(request: Request, body: bytes) -> dict[str, Any]:
    try:
        value: Any = msgspec.json.decode(body) if body.strip() else None
    except (msgspec.DecodeError, RecursionError):
        value = body.decode("utf-8", "replace")
    return {
        "method": request.method,
        "path": request.url.path,
        "query": {k: request.query_params[k] for k in request.query_params},
        "headers": {k: v for k, v in request.headers.items() if k not in PRIVATE_HEADERS},
        "body": value,
    }


async def _run(request: Request, t: Trigger, run_id: str, data: Any) -> tuple[StoredAnswer, bool, str]:
    """The run's answer, whether it is final (a timeout is not: the run goes on), and the
    run's id (another one's if the workflow's own idempotency_key found an earlier run)."""
    assert t.http is not None
    state = request.app.state
    arrivals: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def listener(kind: str) -> Any:
        async def on_message(msg: Any) -> None:
            arrivals.put_nowait((kind, msg.data))

        return on_message

    async def watch_the_caller() -> None:
        # The body is read: the next thing the server can receive is the caller leaving.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        arrivals.put_nowait(("gone", b""))

    nc = state.plane.nc
    subs = [
        await nc.subscribe(response_subject(run_id), cb=listener("response")),
        await nc.subscribe(notice_subject(run_id), cb=listener("notice")),
    ]
    watcher = asyncio.create_task(watch_the_caller())
    try:
        await nc.flush()
        started = await state.ops("run.start", workflow=t.workflow, input=envelope(t, "http", data), run_id=run_id)
        timeout = t.http.timeout_ms / 1000
        if started["run_id"] != run_id:  # deduplicated: answer as that run did, or does
            answer = await _replay(state, Claims(state.plane.js), started["run_id"], timeout)
            return answer, answer.status != 504, started["run_id"]
        return (*await _outcome(state, arrivals, run_id, timeout), run_id)
    finally:
        watcher.cancel()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _outcome(
    state: Any, arrivals: asyncio.Queue[tuple[str, bytes]], run_id: str, timeout: float
) -> tuple[StoredAnswer, bool]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    completed = False
    while (remaining := deadline - loop.time()) > 0:
        try:
            kind, data = await asyncio.wait_for(arrivals.get(), remaining)
        except TimeoutError:
            break
        if kind == "response":
            return _read_response(data, run_id), True
        if kind == "gone":
            # Nobody reads this answer; the run goes on, and a repeat with the same
            # idempotency key is answered as the run answers.
            log.info("HTTP trigger call for run %s: the caller left before the answer (499)", run_id)
            return _error(499, "client_closed", f"the caller left before run {run_id} answered", run_id), False
        notice = decode_notice(data)
        if notice is not None and notice.terminal:
            if notice.status in FAILED:
                return _failure(run_id, notice.status), True
            if not completed:
                completed, deadline = True, min(deadline, loop.time() + COMPLETED_GRACE)
    if completed:
        return _error(502, "no_response", f"run {run_id} completed without a respond step answering", run_id), True
    view = await state.ops("run.get", run_id=run_id)  # a notice may have been lost
    if view["status"] in FAILED:
        return _failure(run_id, view["status"]), True
    return _timeout(run_id), False


async def _replay(state: Any, claims: Claims, run_id: str, timeout: float) -> StoredAnswer:
    """A repeated call's answer: the stored one, else what the run says (its respond step's
    output, or how it ended), polled with backoff from 25 ms to 500 ms up to ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + timeout, 0.025
    while True:
        answer = await claims.stored(run_id)
        if answer is None:
            with contextlib.suppress(RunNotFound):  # the first call has not started it yet
                answer = answer_of_run(await state.plane.reader.get(run_id))
        if answer is not None:
            await claims.keep(run_id, answer)
            return answer
        if loop.time() >= deadline:
            return _timeout(run_id)
        await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 2, 0.5)


def answer_of_run(run: WorkflowRun) -> StoredAnswer | None:
    """The answer a run gave, read from its state (a respond step's output is its response)."""
    steps = run.definition.steps if run.definition is not None else ()
    for step in steps:
        out = run.step(step.id).output
        if step.type == "respond" and run.step(step.id).status == StepStatus.COMPLETED and isinstance(out, dict):
            content_type = str(out.get("content_type") or "application/json")
            body = base64.b64encode(body_bytes(out.get("body"), content_type)).decode()
            return StoredAnswer(int(out.get("status") or 200), dict(out.get("headers") or {}), content_type, body)
    if run.status in FAILED:
        return _failure(run.run_id, run.status)
    if run.status.is_terminal:
        return _error(502, "no_response", f"run {run.run_id} completed without a respond step answering", run.run_id)
    return None


def _read_response(data: bytes, run_id: str) -> StoredAnswer:
    try:
        answer = msgspec.json.decode(data, type=StoredAnswer)
        base64.b64decode(answer.body, validate=True)
        if not 100 <= answer.status <= 599:
            raise ValueError(answer.status)
    except (msgspec.DecodeError, binascii.Error, ValueError):
        return _error(502, "malformed_response", f"run {run_id} sent a response that cannot be read", run_id)
    return answer


def _failure(run_id: str, status: str) -> StoredAnswer:
    code, error = FAILED[status]
    return _error(code, error, f"run {run_id} ended {status} before it responded", run_id)


def _timeout(run_id: str) -> StoredAnswer:
    return _error(504, "workflow_timeout", f"run {run_id} did not respond in time; it goes on", run_id)


def _error(status: int, code: str, message: str, run_id: str) -> StoredAnswer:
    body = encode({"error": code, "message": message, "run_id": run_id})
    return StoredAnswer(status, {}, "application/json", base64.b64encode(body).decode())


def _respond(answer: StoredAnswer, run_id: str) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
    headers[RUN_ID_HEADER] = run_id
    return Response(base64.b64decode(answer.body), answer.status, headers=headers, media_type=answer.content_type)


METHODS = list(HTTP_METHODS)
