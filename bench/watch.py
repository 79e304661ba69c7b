"""Watching many runs' history records go by, without asking the engine anything.

One ordered push consumer on ``history.>`` (deliver new) in the bench process. For each
record of a run whose id starts with ``prefix`` it notes when the run first showed each
mark (a byte string such as ``b'"type":"workflow.completed"'``, searched in the record's
bytes: nothing is decoded), how many records the run had, and, once ``since`` is set
(a wall-clock time), the first record of each run stored by the server at or after that
moment (a run "progressing" after a restart; a record stored earlier and pushed late
does not count).
"""

from __future__ import annotations

import asyncio
import time

from nats.js import api

from dagnats.infra.wire.names import HISTORY_STREAM

COMPLETED = b'"type":"workflow.completed"'
FAILED = b'"type":"workflow.failed"'
STEP_COMPLETED = b'"type":"step.completed"'


class RunsWatch:
    def __init__(self, prefix: str, marks: dict[str, bytes]) -> None:
        self.prefix, self.marks = prefix, marks
        self.seen: dict[str, dict[str, float]] = {name: {} for name in marks}
        self.records: dict[str, int] = {}
        self.steps_done: dict[str, int] = {}  # step.completed events per run
        self.since: float | None = None
        self.first_after: dict[str, float] = {}
        # per run, each record as (server's store time, step.completed events, ends the run)
        self.log: dict[str, list[tuple[float, int, bool]]] = {}
        self._sub = None

    async def subscribe(self, js) -> RunsWatch:
        self._sub = await js.subscribe(
            "history.>",
            stream=HISTORY_STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=self.on_record,
        )
        return self

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def on_record(self, msg) -> None:
        run_id = msg.subject[len("history.") :]
        if not run_id.startswith(self.prefix):
            return
        now = time.perf_counter()
        data = msg.data or b""
        self.records[run_id] = self.records.get(run_id, 0) + 1
        steps = data.count(STEP_COMPLETED)
        self.steps_done[run_id] = self.steps_done.get(run_id, 0) + steps
        stamp = msg.metadata.timestamp.timestamp()
        self.log.setdefault(run_id, []).append((stamp, steps, COMPLETED in data or FAILED in data))
        for name, mark in self.marks.items():
            if mark in data:
                self.seen[name].setdefault(run_id, now)
        if self.since is not None and run_id not in self.first_after:
            if stamp >= self.since:
                self.first_after[run_id] = now

    def at(self, run_id: str, moment: float) -> tuple[int, bool]:
        """(step.completed events, ended) in the run's records stored before ``moment``."""
        before = [(steps, ended) for stamp, steps, ended in self.log.get(run_id, []) if stamp < moment]
        return sum(steps for steps, _ in before), any(ended for _, ended in before)

    def count(self, name: str) -> int:
        return len(self.seen[name])

    async def wait_count(self, name: str, count: int, timeout: float, check=None) -> bool:
        """Until ``count`` runs showed mark ``name``; False after ``timeout`` s. ``check()`` is
        called every poll (e.g. to raise if a process died)."""
        deadline = time.perf_counter() + timeout
        while self.count(name) < count:
            if time.perf_counter() > deadline:
                return False
            if check is not None:
                check()
            await asyncio.sleep(0.05)
        return True
