"""Bringing up a claimed partition's unfinished runs: a bounded number at a time."""

from __future__ import annotations

import asyncio
import threading
import time

from dagnats.actors.messages import Deliver
from dagnats.infra.engine import engine as engine_module
from dagnats.infra.engine.engine import RECOVER_AT_ONCE, Engine


class SlowDirectory:
    """Handles each empty delivery on a thread of its own after a moment, as a run actor
    does once it has rebuilt the run; counts how many were outstanding at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding = self.most = 0
        self.brought_up: list[str] = []

    def tell(self, message: Deliver) -> None:
        with self.lock:
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)
        threading.Thread(target=self._handle, args=(message,)).start()

    def _handle(self, message: Deliver) -> None:
        time.sleep(0.002)
        with self.lock:
            self.outstanding -= 1
            self.brought_up.append(message.run_id)
        message.done(True)


class Store:
    def __init__(self, runs: list[str]) -> None:
        self.runs = runs

    async def open_runs(self, partition: int) -> list[str]:
        return self.runs


class Reader:
    def __init__(self, runs: list[str]) -> None:
        self.store = Store(runs)


def _engine(runs: list[str], directory: SlowDirectory, holds=lambda partition: True) -> Engine:
    engine = Engine.__new__(Engine)
    engine.reader = Reader(runs)  # type: ignore[assignment]
    engine.directory = directory  # type: ignore[assignment]
    engine._recoveries = set()
    engine._holds = holds  # type: ignore[method-assign]
    return engine


def test_unfinished_runs_are_brought_up_a_bounded_number_at_a_time(run):
    runs = [f"r{n}" for n in range(5 * RECOVER_AT_ONCE)]
    directory = SlowDirectory()
    engine = _engine(runs, directory)

    async def body() -> None:
        await engine._recover(3)
        while engine._recoveries:
            await asyncio.sleep(0.01)

    run(body())
    assert sorted(directory.brought_up) == sorted(runs)
    assert 1 < directory.most <= RECOVER_AT_ONCE


def test_a_partition_no_longer_held_stops_bringing_its_runs_up(run, monkeypatch):
    monkeypatch.setattr(engine_module, "RECOVER_AT_ONCE", 4)
    directory = SlowDirectory()
    held = {"yes": True}
    engine = _engine([f"r{n}" for n in range(100)], directory, holds=lambda partition: held["yes"])

    async def body() -> None:
        recovering = asyncio.create_task(engine._recover(0))
        while len(directory.brought_up) < 8:
            await asyncio.sleep(0.001)
        held["yes"] = False
        await recovering
        while engine._recoveries:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more comes

    run(body())
    assert 8 <= len(directory.brought_up) < 100
