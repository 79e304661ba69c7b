"""respond: answer the HTTP request that started the run (an ``http`` trigger), then go on.

The engine runs it: it picks the body, records the step completed (output:
the response, its body as a JSON value) and sends the response on core NATS
to ``dagnats.http.response.<run>``, where the trigger's handler waits. Steps
after it keep running; the caller already has its answer.

The body is the step's input (its single dependency's output, or the run's
input when that is null), or the value at ``body_from`` in it. With a JSON
content type it is sent as JSON; otherwise a string is sent as its text and
anything else as JSON. The message carries ``{status, headers, content_type,
body}`` with ``body`` in base64. It is sent once, after the record: a
response lost in a crash is not sent again (the caller times out with a 504
and the run goes on).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ..actions import PublishMessage
from ..decision import STARTERS, Decision, encoded_size
from ..definition import RespondConfig, StepDef
from ..events import Queued, StepCompleted, StepQueued
from ..paths import PathNotFound, extract_dot_path

RESPONSE_SUBJECT_PREFIX = "dagnats.http.response."


def response_subject(run_id: str) -> str:
    return RESPONSE_SUBJECT_PREFIX + run_id


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, RespondConfig)
    source = d.run.input if data is None else data
    try:
        value = extract_dot_path(source, config.body_from) if config.body_from else source
    except PathNotFound:
        d.reject(step, f"respond: body_from {config.body_from!r} is not in the step's input")
        return
    if encoded_size(value) > d.max_message // 2:  # base64 grows it by a third
        d.reject(step, f"respond: the body is over {d.max_message // 2} bytes")
        return
    body = body_bytes(value, config.content_type)
    headers = dict(config.headers or {})
    attempt = d.run.step(step.id).attempts + 1
    output = {"status": config.status, "headers": headers, "content_type": config.content_type, "body": value}
    d.append(StepQueued, step.id, attempt, Queued())
    d.append(StepCompleted, step.id, attempt, output)
    message = {
        "status": config.status,
        "headers": headers,
        "content_type": config.content_type,
        "body": base64.b64encode(body).decode(),
    }
    d.actions.append(PublishMessage(response_subject(d.run.run_id), message))


def is_json_type(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def body_bytes(value: Any, content_type: str) -> bytes:
    if isinstance(value, str) and not is_json_type(content_type):
        return value.encode()
    return msgspec.json.encode(value)


STARTERS["respond"] = start
