"""Reactive executions on WORKFLOW_HISTORY: load by replay, append one conditional record.

Same fence as DAG runs: ``Nats-Expected-Last-Subject-Sequence`` = the last
sequence folded, ``Nats-Msg-Id`` derived from the input, so a second writer or
a retried input cannot make a history diverge.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError

from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.reactive.events import ReactiveEvent, decode_reactive_record, encode_reactive_record
from dagnats.domain.reactive.fold import Execution, fold

from ..wire.headers import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, WRONG_LAST_SEQUENCE_CODES
from ..wire.names import HISTORY_STREAM
from ..wire.reading import stored_messages
from ..wire.subjects import history_subject


async def load_execution(js: JetStreamContext, execution_id: str) -> tuple[Execution, int, list[ReactiveEvent]]:
    """The execution folded from its whole history, its last sequence, and its last record."""
    ex, last_seq, last = Execution(execution_id=execution_id), 0, []
    async for msg in stored_messages(js, HISTORY_STREAM, history_subject(execution_id)):
        last = decode_reactive_record(msg.data or b"[]")
        for event in last:
            ex = fold(ex, event)
        last_seq = msg.seq or last_seq
    return ex, last_seq, last


async def append_record(
    js: JetStreamContext, execution_id: str, events: list[ReactiveEvent], expected_seq: int, msg_id: str
) -> int:
    headers = {MSG_ID: msg_id, EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq)}
    try:
        ack = await js.publish(history_subject(execution_id), encode_reactive_record(events), headers=headers)
    except APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE_CODES:
            raise WrongLastSequence(str(err)) from None
        raise
    if ack.duplicate:
        raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
    return ack.seq
