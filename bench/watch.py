"""Watching many runs' history records go by, without asking the engine anything.

One ordered push consumer on ``history.>`` (deliver new) in the bench process. For each
record of a run whose id starts with ``prefix`` it notes when the run first showed each
mark (a byte string such as ``b'"type":"workflow.completed"'``, searched in the record's
bytes: nothing is decoded), how many records the run had, and, once ``since`` is set,
the first record of each run after that moment (a run "progressing" after a restart).
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
        self.steps_done[run_id] = self.steps_done.get(run_id, 0) + data.count(STEP_COMPLETED)
        for name, mark in self.marks.items():
            if mark in data:
                self.seen[name].setdefault(run_id, now)
        if self.since is not None and now >= self.since:
            self.first_after.setdefault(run_id, now)

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
