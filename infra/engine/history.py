"""Run histories on WORKFLOW_HISTORY and snapshots in the workflow_runs KV.

Appends are conditional (``Nats-Expected-Last-Subject-Sequence``) and
idempotent (``Nats-Msg-Id``). Snapshots are a cache holding ``last_seq``;
loading always folds the history after it.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import Event, decode_record
from dagnats.domain.fold import fold
from dagnats.domain.partition import partition_of
from dagnats.domain.state import StepState, WorkflowRun

from .. import metrics
from ..wire.headers import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, WRONG_LAST_SEQUENCE_CODES
from ..wire.names import HISTORY_STREAM, RUNS_BUCKET
from ..wire.reading import kv_entries, stored_batches, stored_messages
from ..wire.subjects import history_subject


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
    """A finished run's snapshot (and every run's, without partitions)."""
    return f"run.{run_id}"


def open_key(run_id: str, partitions: int) -> str:
    """An unfinished run's snapshot, under its partition: listing ``open.<partition>.*``
    finds a partition's unfinished runs without reading the finished ones."""
    return f"open.{partition_of(run_id, partitions)}.{run_id}"


# How many runs' open-key sequences a store remembers (a few bytes each).
OPEN_KEYS_REMEMBERED = 100_000


class HistoryStore:
    """A run's history (the truth) and its snapshot (a cache).

    With ``partitions``, an unfinished run's snapshot lives under ``open.<partition>.<run>``
    and a finished one's under ``run.<run>``: when a run ends, its open snapshot is purged
    from the bucket's stream (a purge by subject leaves no marker, so the open keys of a
    partition are exactly its unfinished runs). A run's snapshots are written one at a
    time, in order, so an older one never lands after a newer one.
    """

    def __init__(self, js: JetStreamContext, max_payload: int = 1024 * 1024, partitions: int | None = None) -> None:
        self.js, self.max_payload, self.partitions = js, max_payload, partitions
        self._runs = None
        # The last sequence this process appended to each live run's history (the
        # reader's proof that a published state is the newest: see RunReader.get).
        self.appended: dict[str, int] = {}
        self._saving: dict[str, asyncio.Future] = {}
        # Unfinished runs whose open key this process read or wrote, and the sequence of the
        # state it holds: saving that state again writes nothing (a sleeping run woken by
        # its timer is loaded and taken up again, with nothing new to list).
        self._open_at: OrderedDict[str, int] = OrderedDict()

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
                metrics.append_outcome("conflict")
                raise WrongLastSequence(str(err)) from None
            raise
        if ack.duplicate:
            # Someone already stored a record under this id: re-read to learn what.
            metrics.append_outcome("duplicate")
            raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
        metrics.append_outcome("ok")
        self.appended[run_id] = ack.seq
        return ack.seq

    async def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        """Every record after ``after_seq``: hundreds per request, then the rest from the
        stream's leader. A batched read may be answered by a replica a moment behind, which
        holds a prefix of the history; the leader's tail makes it whole (one request that
        finds nothing, in the usual case), so the run's owner sees its own last append."""
        subject = history_subject(run_id)
        records: list[tuple[int, list[Event]]] = []
        last = after_seq
        async for msg in stored_batches(self.js, HISTORY_STREAM, subject, after_seq):
            last = msg.seq or last
            records.append((last, decode_record(msg.data or b"[]")))
        async for msg in stored_messages(self.js, HISTORY_STREAM, subject, last):
            records.append((msg.seq or 0, decode_record(msg.data or b"[]")))
        return records

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

    def _keys(self, run_id: str) -> list[str]:
        keys = [snapshot_key(run_id)]
        if self.partitions:
            keys.append(open_key(run_id, self.partitions))
        return keys

    async def load_snapshot(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        kv = await self.runs_kv()
        for key in self._keys(run_id):
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue
            if entry.value:
                snap = _SNAPSHOT_DECODER.decode(entry.value)
                if key != snapshot_key(run_id):
                    self._opened(run_id, snap.last_seq)
                return snap.run, snap.last_seq
        return None, 0

    def _opened(self, run_id: str, last_seq: int) -> None:
        self._open_at[run_id] = last_seq
        self._open_at.move_to_end(run_id)
        while len(self._open_at) > OPEN_KEYS_REMEMBERED:
            self._open_at.popitem(last=False)

    async def save_snapshot(self, run: WorkflowRun, last_seq: int, listed: bool = True) -> None:
        """Cache the state at ``last_seq``; a state too large for one message (a map of
        thousands) is kept as a summary at sequence 0 — statuses for listings and
        recovery, while a reader folds the whole history. A finished run's open key is
        purged unless it was never ``listed`` (a run that ended before it was indexed)."""
        previous = self._saving.get(run.run_id)
        mine: asyncio.Future = asyncio.get_running_loop().create_future()
        self._saving[run.run_id] = mine
        try:
            if previous is not None:
                await previous
            await self._save(run, last_seq, listed)
        finally:
            mine.set_result(None)
            if self._saving.get(run.run_id) is mine:
                del self._saving[run.run_id]

    async def _save(self, run: WorkflowRun, last_seq: int, listed: bool) -> None:
        kv = await self.runs_kv()
        data = _SNAPSHOT_ENCODER.encode(Snapshot(run, last_seq))
        if len(data) > self.max_payload - SNAPSHOT_HEADROOM:
            data = _SNAPSHOT_ENCODER.encode(Snapshot(summary(run), 0))
        if self.partitions and not run.is_terminal:
            if last_seq and self._open_at.get(run.run_id) == last_seq:
                return  # the open key holds this very state already
            await kv.put(open_key(run.run_id, self.partitions), data)
            self._opened(run.run_id, last_seq)
            return
        self._open_at.pop(run.run_id, None)
        await kv.put(snapshot_key(run.run_id), data)
        if self.partitions and listed:
            await self._purge_key(open_key(run.run_id, self.partitions))

    async def _purge_key(self, key: str) -> None:
        """Remove a key and leave no marker (``kv.purge`` would leave one)."""
        await self.js.purge_stream(f"KV_{RUNS_BUCKET}", subject=f"$KV.{RUNS_BUCKET}.{key}")

    async def open_runs(self, partition: int) -> list[str]:
        """The unfinished runs of ``partition``: the open keys under it, page by page."""
        nc = self.js._nc  # the stream-info request with an offset (nats-py asks without one)
        runs: list[str] = []
        offset = 0
        prefix = f"$KV.{RUNS_BUCKET}.open.{partition}."
        while True:
            request = {"subjects_filter": f"{prefix}*", "offset": offset}
            reply = await nc.request(f"$JS.API.STREAM.INFO.KV_{RUNS_BUCKET}", json.dumps(request).encode(), timeout=10)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"listing the unfinished runs of partition {partition}: {answer['error']}")
            subjects = (answer.get("state") or {}).get("subjects") or {}
            runs += [subject[len(prefix) :] for subject in subjects]
            offset += len(subjects)
            if not subjects or offset >= answer.get("total", offset):
                return runs

    async def snapshots(self) -> list[Snapshot]:
        """Every run's latest snapshot, read in one pass over the bucket."""
        latest: dict[str, Snapshot] = {}
        for _, value in await kv_entries(self.js, RUNS_BUCKET, ">"):
            snap = _SNAPSHOT_DECODER.decode(value)
            known = latest.get(snap.run.run_id)
            if known is None or snap.run.is_terminal or (not known.run.is_terminal and snap.last_seq > known.last_seq):
                latest[snap.run.run_id] = snap
        return list(latest.values())

    async def delete(self, run_id: str) -> None:
        """Remove a run's history and snapshots (the caller checks it is terminal). A
        snapshot of the run still being saved here is waited for first: stored after the
        purge, it would serve the deleted run."""
        saving = self._saving.get(run_id)
        if saving is not None:
            await asyncio.shield(saving)
        self._open_at.pop(run_id, None)
        await self.js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id))
        await self.runs_kv()
        for key in self._keys(run_id):
            await self._purge_key(key)
