"""Run histories on WORKFLOW_HISTORY and snapshots in the workflow_runs KV.

Appends are conditional (``Nats-Expected-Last-Subject-Sequence``) and
idempotent (``Nats-Msg-Id``). Snapshots are a cache holding ``last_seq``;
loading always folds the history after it.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import Event, decode_record
from dagnats.domain.fold import fold
from dagnats.domain.state import StepState, WorkflowRun

from ..wire.headers import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, WRONG_LAST_SEQUENCE_CODES
from ..wire.names import HISTORY_STREAM, RUNS_BUCKET
from ..wire.reading import kv_entries, stored_messages
from ..wire.subjects import history_subject
from .open_runs import OpenRuns


class Snapshot(msgspec.Struct, frozen=True):
    run: WorkflowRun
    last_seq: int


_SNAPSHOT_ENCODER = msgspec.json.Encoder()
_SNAPSHOT_DECODER = msgspec.json.Decoder(Snapshot)


# Room a snapshot leaves for the KV message's subject and headers.
SNAPSHOT_HEADROOM = 4096


def summary(run: WorkflowRun) -> WorkflowRun:
    """The run without its values: status, steps' statuses and times, definition."""
    steps = {
        step_id: StepState(
            status=s.status, attempts=s.attempts, task=s.task, started_at=s.started_at, finished_at=s.finished_at
        )
        for step_id, s in run.steps.items()
    }
    return msgspec.structs.replace(run, steps=steps, input=None, output=None)


def snapshot_key(run_id: str) -> str:
    return f"run.{run_id}"


class HistoryStore:
    def __init__(self, js: JetStreamContext, max_payload: int = 1024 * 1024, open_runs: OpenRuns | None = None) -> None:
        self.js, self.max_payload, self.open_runs = js, max_payload, open_runs
        self._runs = None

    async def runs_kv(self):
        if self._runs is None:
            self._runs = await self.js.key_value(RUNS_BUCKET)
        return self._runs

    async def append(self, run_id: str, record: bytes, expected_seq: int, msg_id: str) -> int:
        """Append one encoded record (``encode_record``) if the run's last sequence is ``expected_seq``."""
        headers = {MSG_ID: msg_id, EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq)}
        try:
            ack = await self.js.publish(history_subject(run_id), record, headers=headers)
        except APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE_CODES:
                raise WrongLastSequence(str(err)) from None
            raise
        if ack.duplicate:
            # Someone already stored a record under this id: re-read to learn what.
            raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
        return ack.seq

    async def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        return [
            (msg.seq or 0, decode_record(msg.data or b"[]"))
            async for msg in stored_messages(self.js, HISTORY_STREAM, history_subject(run_id), after_seq)
        ]

    async def events(self, run_id: str) -> list[tuple[int, Event]]:
        return [(seq, e) for seq, events in await self.read_after(run_id, 0) for e in events]

    async def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        run, last_seq = await self.load_snapshot(run_id)
        if not last_seq:
            run = None  # a summary (the state was too large to keep): fold the whole history
        for seq, events in await self.read_after(run_id, last_seq):
            for event in events:
                run = fold(run if run is not None else WorkflowRun(run_id=run_id), event)
            last_seq = seq
        return run, last_seq

    async def load_snapshot(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        kv = await self.runs_kv()
        try:
            entry = await kv.get(snapshot_key(run_id))
        except (KeyNotFoundError, NotFoundError):
            return None, 0
        if not entry.value:
            return None, 0
        snap = _SNAPSHOT_DECODER.decode(entry.value)
        return snap.run, snap.last_seq

    async def save_snapshot(self, run: WorkflowRun, last_seq: int) -> None:
        """Cache the state at ``last_seq``; a state too large for one message (a map of
        thousands) is kept as a summary at sequence 0 — statuses for listings and
        recovery, while a reader folds the whole history."""
        kv = await self.runs_kv()
        data = _SNAPSHOT_ENCODER.encode(Snapshot(run, last_seq))
        if len(data) > self.max_payload - SNAPSHOT_HEADROOM:
            data = _SNAPSHOT_ENCODER.encode(Snapshot(summary(run), 0))
        await kv.put(snapshot_key(run.run_id), data)
        if self.open_runs is not None:  # the index of unfinished runs rides along (start, end)
            await self.open_runs.mark(run)

    async def snapshots(self) -> list[Snapshot]:
        """Every snapshot, read in one pass over the bucket."""
        return [_SNAPSHOT_DECODER.decode(value) for _, value in await kv_entries(self.js, RUNS_BUCKET, ">")]

    async def delete(self, run_id: str) -> None:
        """Remove a run's history and snapshot (the caller checks it is terminal)."""
        await self.js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id))
        kv = await self.runs_kv()
        await kv.purge(snapshot_key(run_id))
