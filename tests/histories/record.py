"""Record the golden histories: ``python tests/histories/record.py``.

Each scenario feeds fixed facts, at fixed times, through ``decide.evolve``
and writes ``<name>.history.json`` (every event as the run's history holds
it: each fact followed by the decisions it caused) and
``<name>.expected.json`` (the state that history folds to). The files are
fixtures: regenerate them only on purpose, read the diff, and commit it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dagnats.domain import events as ev  # noqa: E402
from dagnats.domain.actions import StartTimer  # noqa: E402
from dagnats.domain.definition import decode_workflow  # noqa: E402
from dagnats.domain.validate import validate  # noqa: E402

from strategies import Recorder, at, completed, failed, started_event, timer_fired, worker_fact  # noqa: E402


def definition(doc: dict) -> object:
    return validate(decode_workflow(json.dumps(doc)))


def started(step_id: str, attempt: int, t: float) -> ev.Event:
    return worker_fact(ev.STEP_STARTED, step_id, attempt, None, at(t))


def hello_pipeline() -> Recorder:
    """The tutorial run: greet -> uppercase -> reverse on "World"."""
    wf = definition(
        {
            "name": "hello-pipeline",
            "version": "1.0",
            "steps": [
                {"id": "greet", "task": "greet"},
                {"id": "uppercase", "task": "uppercase", "depends_on": ["greet"]},
                {"id": "reverse", "task": "reverse", "depends_on": ["uppercase"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, "World"), at(0))
    for t, (step, output) in enumerate(
        [("greet", "Hello, World!"), ("uppercase", "HELLO, WORLD!"), ("reverse", "!DLROW ,OLLEH")]
    ):
        rec.feed(started(step, 1, 2 * t + 1), at(2 * t + 1))
        rec.feed(completed(step, 1, output, at(2 * t + 2)), at(2 * t + 2))
    return rec


def retry_then_success() -> Recorder:
    """fetch fails once, is retried after its backoff, succeeds; a re-sent completion is ignored."""
    wf = definition(
        {
            "name": "flaky-fetch",
            "steps": [
                {
                    "id": "fetch",
                    "task": "fetch",
                    "timeout": "30s",
                    "retry": {
                        "max_attempts": 3,
                        "strategy": "exponential",
                        "initial_delay": "2s",
                        "max_delay": "30s",
                        "multiplier": 2.0,
                    },
                },
                {"id": "store", "task": "store", "depends_on": ["fetch"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"url": "https://example.com/data"}), at(0))
    rec.feed(started("fetch", 1, 1), at(1))
    rec.feed(failed("fetch", 1, "connection reset", moment=at(2)), at(2))
    (retry,) = [t for t in rec.timers if t.kind == "retry"]
    rec.feed(timer_fired(retry, at(4)), at(4))
    rec.feed(started("fetch", 2, 5), at(5))
    rec.feed(completed("fetch", 2, {"bytes": 512}, at(6)), at(6))
    rec.feed(completed("fetch", 2, {"bytes": 512}, at(7)), at(7))  # re-sent by the worker
    rec.feed(started("store", 1, 8), at(8))
    rec.feed(completed("store", 1, {"stored": True}, at(9)), at(9))
    return rec


def exhausted_retries() -> Recorder:
    """charge fails on every one of its 1 + 2 attempts; the run fails."""
    wf = definition(
        {
            "name": "always-declined",
            "steps": [
                {
                    "id": "charge",
                    "task": "charge",
                    "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
                },
                {"id": "ship", "task": "ship", "depends_on": ["charge"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"amount": 42}), at(0))
    t = 1
    for attempt in (1, 2, 3):
        rec.feed(started("charge", attempt, t), at(t))
        rec.feed(failed("charge", attempt, "card declined", moment=at(t + 1)), at(t + 1))
        timers = [x for x in rec.timers if isinstance(x, StartTimer) and x.attempt == attempt]
        if timers:
            rec.feed(timer_fired(timers[0], at(t + 2)), at(t + 2))
        t += 3
    return rec


SCENARIOS = {
    "hello-pipeline": hello_pipeline,
    "retry-then-success": retry_then_success,
    "exhausted-retries": exhausted_retries,
}


def write(name: str, rec: Recorder) -> None:
    history = msgspec.to_builtins(rec.history)
    (HERE / f"{name}.history.json").write_text(json.dumps(history, indent=1, ensure_ascii=False) + "\n")
    state = msgspec.to_builtins(rec.run)
    (HERE / f"{name}.expected.json").write_text(json.dumps(state, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for name, scenario in SCENARIOS.items():
        write(name, scenario())
        print(f"wrote {name}")
