"""Triggers over HTTP: manage them (``/triggers``), fire one by hand, and webhooks.

``POST /hooks/{hook}`` starts a run of the webhook trigger whose path is
``/hooks/{hook}``. With a secret, the body must carry ``X-Signature-256:
sha256=<hex HMAC-SHA256 of the body>``, compared in constant time; a bad or
missing signature is a 401 and starts nothing. Webhooks need no API token
(the signature is their credential; see guard.py).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request

from dagnats.domain.triggers import redacted

from ..debouncer import Debouncer
from ..triggers import Trigger, TriggerNotFound, TriggerStore, envelope
from .endpoints import Call, EndpointSet, read_body
from .errors import ApiError

ROUTES = EndpointSet()


class TriggerList(msgspec.Struct, frozen=True):
    triggers: list[Trigger]


class Fire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data: Any = None


def store(call: Call | Request) -> TriggerStore:
    state = (call.request if isinstance(call, Call) else call).app.state
    if getattr(state, "trigger_store", None) is None:
        state.trigger_store = TriggerStore(state.plane.js)
    return state.trigger_store


def check_signature(secret: str, body: bytes, given: str) -> None:
    """401 unless ``given`` is ``sha256=<hex HMAC-SHA256 of body>`` (compared in constant time)."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "invalid_signature", "X-Signature-256 is missing or does not match the body")


async def _get(call: Call) -> Trigger:
    try:
        return await store(call).get(call.path["trigger_id"])
    except TriggerNotFound as err:
        raise ApiError(404, "trigger_not_found", str(err)) from None


@ROUTES.add("GET", "/triggers", "List triggers", "triggers", answer=TriggerList, errors=())
async def list_triggers(call: Call) -> Any:
    return TriggerList([redacted(t) for t in await store(call).all()])


@ROUTES.add(
    "POST",
    "/triggers",
    "Create (or replace) a trigger: cron, webhook or subject",
    "triggers",
    body=Trigger,
    body_required=True,
    answer=Trigger,
    status=201,
    errors=(400, 404),
)
async def create_trigger(call: Call) -> Any:
    t: Trigger = call.body
    await call.request.app.state.ops("workflow.get", name=t.workflow)  # WorkflowNotFound: 404
    return redacted(await store(call).put(t))


@ROUTES.add("GET", "/triggers/{trigger_id}", "Show a trigger", "triggers", answer=Trigger)
async def get_trigger(call: Call) -> Any:
    return redacted(await _get(call))


@ROUTES.add("POST", "/triggers/{trigger_id}/enable", "Enable a trigger", "triggers", answer=Trigger)
async def enable_trigger(call: Call) -> Any:
    await _get(call)
    return redacted(await store(call).set_enabled(call.path["trigger_id"], True))


@ROUTES.add("POST", "/triggers/{trigger_id}/disable", "Disable a trigger", "triggers", answer=Trigger)
async def disable_trigger(call: Call) -> Any:
    await _get(call)
    return redacted(await store(call).set_enabled(call.path["trigger_id"], False))


@ROUTES.add("DELETE", "/triggers/{trigger_id}", "Delete a trigger", "triggers")
async def delete_trigger(call: Call) -> Any:
    await _get(call)
    await store(call).delete(call.path["trigger_id"])
    return {"id": call.path["trigger_id"], "deleted": True}


@ROUTES.add(
    "POST",
    "/triggers/{trigger_id}/fire",
    "Start a run of the trigger's workflow now",
    "triggers",
    body=Fire,
    status=201,
    errors=(400, 404, 422),
)
async def fire_trigger(call: Call) -> Any:
    t = await _get(call)
    started = await call.request.app.state.ops(
        "run.start", workflow=t.workflow, input=envelope(t, "manual", call.body.data)
    )
    return {"run_id": started["run_id"], "trigger": t.id}


@ROUTES.add(
    "POST",
    "/hooks/{hook}",
    "A webhook trigger (HMAC X-Signature-256 when it has a secret)",
    "triggers",
    status=202,
    errors=(401, 404, 409, 413),
    public=True,
)
async def webhook(call: Call) -> Any:
    path = f"/hooks/{call.path['hook']}"
    body = await read_body(call.request, call.request.app.state.max_body)
    found = [t for t in await store(call).all() if t.webhook is not None and t.webhook.path == path]
    if not found:
        raise ApiError(404, "not_found", f"no webhook trigger at {path}")
    t = found[0]
    assert t.webhook is not None
    if t.webhook.secret:
        check_signature(t.webhook.secret, body, call.request.headers.get("x-signature-256", ""))
    if not t.enabled:
        raise ApiError(409, "trigger_disabled", f"trigger {t.id} is disabled")
    try:
        data: Any = msgspec.json.decode(body) if body.strip() else None
    except msgspec.DecodeError:
        data = body.decode("utf-8", "replace")
    if t.debounce is not None:
        await Debouncer(call.request.app.state.plane.js).add(t, data, datetime.now(UTC))
        return {"trigger": t.id, "debounced": True}
    started = await call.request.app.state.ops("run.start", workflow=t.workflow, input=envelope(t, "webhook", data))
    return {"run_id": started["run_id"], "trigger": t.id}
