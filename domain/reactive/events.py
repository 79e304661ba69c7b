"""The history of a reactive execution: its own event family on ``history.<execution-id>``.

Every event carries the execution's state *after* it (plain data) and the
messages it decided to publish, so folding a history needs none of the
workflow author's code: replay is deterministic even if a rule changed since.
Tags start with ``reactive.``, which is how readers tell these histories from
DAG runs'.
"""

from __future__ import annotations

from typing import Any

import msgspec

EXECUTION_CREATED = "reactive.created"
RULE_FIRED = "reactive.fired"
CALLBACK_APPLIED = "reactive.callback"
EXECUTION_ENDED = "reactive.ended"
TAG_PREFIX = "reactive."


class Outgoing(msgspec.Struct, frozen=True):
    """A message to publish once the record holding it is stored."""

    subject: str
    data: Any = None
    msg_id: str = ""


class ReactiveEventBase(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type"):
    execution_id: str
    id: str = ""
    timestamp: str = ""
    state: dict[str, Any] | None = None
    outgoing: tuple[Outgoing, ...] = ()

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class ExecutionCreated(ReactiveEventBase, frozen=True, tag=EXECUTION_CREATED):
    workflow_id: str = ""
    key: str = ""
    deadline: str = ""


class RuleFired(ReactiveEventBase, frozen=True, tag=RULE_FIRED):
    rule_id: str = ""
    trigger_mode: str = ""
    trigger_info: str = ""
    # The input's place in its source (KV revision, stream sequence): inputs at or
    # before the last one seen from the same source fire nothing again.
    source: str = ""
    position: int = 0
    action: str = ""
    task_id: str = ""
    # The execution's n-th firing: a record applied twice fires nothing twice.
    number: int = 0


class CallbackApplied(ReactiveEventBase, frozen=True, tag=CALLBACK_APPLIED):
    task_id: str = ""
    rule_id: str = ""
    latency_ms: int = 0


class ExecutionEnded(ReactiveEventBase, frozen=True, tag=EXECUTION_ENDED):
    status: str = ""
    reason: str = ""


ReactiveEvent = RuleFired | CallbackApplied | ExecutionCreated | ExecutionEnded

_ENCODER = msgspec.json.Encoder()
_RECORD_DECODER = msgspec.json.Decoder(list[ReactiveEvent])


def encode_reactive_record(events: list[ReactiveEvent]) -> bytes:
    return _ENCODER.encode(events)


def decode_reactive_record(data: bytes) -> list[ReactiveEvent]:
    return _RECORD_DECODER.decode(data)


def is_reactive_record(data: bytes) -> bool:
    """Whether a history message holds reactive events (its first event's tag says so)."""
    head = data[:200]
    return b'"type":"reactive.' in head
