"""RunReader: the engine's owned read model of runs.

Run actors publish their state here after each record they append (the
``StatePort`` they are given), from their own threads; readers on the event
loop (the control plane, the correlator, later the HTTP API) ask here and
nowhere else. An answer comes from the live actor's published state (plus any
record appended since, so a reader that saw a record in the history never
reads an older state), else the snapshot plus the history after it, else the
run's start request still waiting in its inbox (shown as pending). The
history is not read when this process appended the record the published state
follows and holds the run's partition: then nothing can follow it. An ended
run's last state is kept ``ENDED_KEPT`` seconds after its actor stops, for the
waiters that read it once more.

The record that ends a run is also announced as a ``RunNotice`` (core NATS) on
``dagnats.run.<run>.end``: that is what clients waiting for the run listen to (one
waiting for a step listens to the run's history subject itself).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from dagnats.domain.errors import RunNotFound
from dagnats.domain.events import Event, WorkflowStarted, decode_record
from dagnats.domain.fold import fold
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.partition import partition_of
from dagnats.domain.state import RunStatus, WorkflowRun, new_run

from ..wire.names import HISTORY_STREAM, INBOX_STREAM
from ..wire.notices import RunNotice, encode_notice
from ..wire.reading import first_message
from ..wire.subjects import history_subject, notice_subject, stored_inbox_filter
from .bridge import poster
from .history import HistoryStore
from .views import run_view

log = logging.getLogger("dagnats.reader")
# How long, and how many, ended runs' last states are kept after their actors stop.
ENDED_KEPT = 10.0  # seconds
ENDED_MAX = 10_000


def _appended_since(store: HistoryStore, run_id: str, seq: int) -> bool:
    """Whether this process appended the run's record at ``seq`` or one after it (an
    append that expected the history to end at the published state's sequence)."""
    appended = store.appended.get(run_id)
    return appended is not None and appended >= seq


class RunReader:
    def __init__(self, nc: NATS, store: HistoryStore, loop: asyncio.AbstractEventLoop) -> None:
        self.nc, self.store, self.loop = nc, store, loop
        self._post = poster(loop)
        self.js = nc.jetstream()
        self._lock = threading.Lock()
        self._live: dict[str, tuple[WorkflowRun, int]] = {}
        # Ended runs: (state, its sequence, whether this process appended that record, until).
        self._ended: OrderedDict[str, tuple[WorkflowRun, int, bool, float]] = OrderedDict()
        self._outbox: deque[tuple[str, bytes]] = deque()  # notices, touched on the loop only
        # Whether this engine holds the run's partition now (set by the engine once its
        # leases exist): only then is its actor's state the newest without a read.
        self.owns: Callable[[str], bool] = lambda run_id: True

    # ---- the actors' side (StatePort), called from their threads ---------------------

    def publish(self, run: WorkflowRun, last_seq: int, recorded: list[Event]) -> None:
        with self._lock:
            self._live[run.run_id] = (run, last_seq)
            self._ended.pop(run.run_id, None)
        if recorded and run.is_terminal:
            notice = RunNotice(seq=last_seq, status=str(run.status), view=run_view(run))
            self._post(self._announce, notice_subject(run.run_id), encode_notice(notice))

    def forget(self, run_id: str, keep_ended: bool = True) -> None:
        """The run's actor stopped (``keep_ended``: an ended run's last state is still
        served for ``ENDED_KEPT`` seconds), or the run was deleted."""
        with self._lock:
            live = self._live.pop(run_id, None)
            self._ended.pop(run_id, None)
            if keep_ended and live is not None and live[0].is_terminal:
                # A waiter reads the run once more when its terminal notice arrives,
                # often after the actor stopped: answer it from memory, for a while.
                mine = self.store.appended.get(run_id) == live[1]
                self._ended[run_id] = (*live, mine, time.monotonic() + ENDED_KEPT)
                while len(self._ended) > ENDED_MAX:
                    self._ended.popitem(last=False)
        if live is not None:
            self._post(self._appended_no_more, run_id, live[1])

    def forget_partition(self, partition: int, partitions: int) -> None:
        """A partition this engine held went to another: what its runs' actors published
        here is no longer the newest without a read (the other engine appends from now
        on), even once the partition comes back. Its runs are read from the history until
        their actors publish again after an append of their own."""
        with self._lock:
            for held in (self._live, self._ended):
                for run_id in [r for r in held if partition_of(r, partitions) == partition]:
                    del held[run_id]
        for run_id in [r for r in self.store.appended if partition_of(r, partitions) == partition]:
            del self.store.appended[run_id]

    def _appended_no_more(self, run_id: str, seq: int) -> None:
        # Unless a new actor of the run appended meanwhile.
        if self.store.appended.get(run_id) == seq:
            del self.store.appended[run_id]

    def _announce(self, subject: str, data: bytes) -> None:
        # One task sends every notice queued meanwhile: no task per record.
        self._outbox.append((subject, data))
        if len(self._outbox) == 1:
            asyncio.ensure_future(self._send_queued())

    async def _send_queued(self) -> None:
        while self._outbox:
            subject, data = self._outbox.popleft()
            try:
                await self.nc.publish(subject, data)
            except Exception as err:  # noqa: BLE001 - a notice is a hint; waiters re-read on their own
                log.debug("notice on %s not sent: %s", subject, err)

    # ---- the readers' side, on the loop ------------------------------------------------

    def _recently_ended(self, run_id: str) -> tuple[WorkflowRun, int, bool] | None:
        ended = self._ended.get(run_id)
        if ended is None:
            return None
        run, seq, mine, until = ended
        if time.monotonic() > until:
            del self._ended[run_id]
            return None
        return run, seq, mine

    def live(self) -> list[WorkflowRun]:
        """The states of the runs with a live actor, as last published."""
        with self._lock:
            return [run for run, _ in self._live.values()]

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)

    async def get(self, run_id: str) -> WorkflowRun:
        """The run as recorded (or pending in its inbox); RunNotFound if it does not exist."""
        check_identifier("run id", run_id)
        with self._lock:
            live = self._live.get(run_id)
            known = (*live, _appended_since(self.store, run_id, live[1])) if live else self._recently_ended(run_id)
        if known is not None:
            run, seq, mine = known
            # The newest state without a read only if this process appended the record it
            # follows (or a later one, which its actor is about to publish: the record's
            # facts are not acknowledged before that), and holds the run's partition: a
            # state an actor loaded may miss a record that a killed engine's last publish
            # stored a moment later.
            if mine and self.owns(run_id):
                return run
            for _, events in await self.store.read_after(run_id, seq):
                for event in events:
                    run = fold(run, event)
            return run
        # Not recorded yet: its start may wait in the inbox, or have just moved from
        # there to the history (recorded before the inbox message is acked).
        found = await self._recorded(run_id) or await self._accepted(run_id) or await self._recorded(run_id)
        if found is None:
            raise RunNotFound(run_id)
        return found

    async def status_of(self, run_id: str) -> RunStatus | None:
        """The run's status, or None for a run that does not exist."""
        try:
            return (await self.get(run_id)).status
        except RunNotFound:
            return None

    async def _recorded(self, run_id: str) -> WorkflowRun | None:
        run, _ = await self.store.load(run_id)
        return run if run is not None and run.definition is not None else None

    async def _accepted(self, run_id: str) -> WorkflowRun | None:
        """A run whose start request waits in its inbox: shown as pending."""
        event = await self._first_start(INBOX_STREAM, stored_inbox_filter(run_id))
        if event is None:
            return None
        run = fold(new_run(run_id), event)
        return msgspec.structs.replace(run, status=RunStatus.PENDING) if run.definition else None

    async def recorded_start(self, run_id: str) -> WorkflowStarted | None:
        """The start request of a run, if its history holds one (a single read)."""
        return await self._first_start(HISTORY_STREAM, history_subject(check_identifier("run id", run_id)))

    async def first_event(self, run_id: str) -> WorkflowStarted | None:
        """The start request of a run, recorded or still waiting in its inbox."""
        check_identifier("run id", run_id)
        return await self._first_start(HISTORY_STREAM, history_subject(run_id)) or await self._first_start(
            INBOX_STREAM, stored_inbox_filter(run_id)
        )

    async def _first_start(self, stream: str, subject: str) -> WorkflowStarted | None:
        msg = await first_message(self.js, stream, subject)
        try:
            events = decode_record(msg.data or b"") if msg is not None else []
        except msgspec.DecodeError:
            return None
        return events[0] if events and isinstance(events[0], WorkflowStarted) else None
