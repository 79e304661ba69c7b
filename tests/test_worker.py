"""The worker SDK against a real nats-server: tasks in, facts out.

Each test plays the engine by hand: it publishes TaskPayloads to
``task.<task>.<run>`` and reads the facts the worker reports from
``inbox.<run>``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import msgspec
import pytest
from nats.js import api

from dagnats.domain.errors import InvalidIdentifier, TaskAlreadyRegistered, WorkerLoadError
from dagnats.domain.events import parse_timestamp
from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.wire.headers import MSG_ID
from dagnats.infra.wire.names import INBOX_STREAM, TASK_STREAM
from dagnats.infra.worker import Permanent, RateLimited, TaskContext, Worker, load_worker

from worker_support import Inbox, drained, engine_js, eventually, publish_task, queued, running

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- handler types ------------------------------------------------------------------


class Order(msgspec.Struct):
    sku: str
    qty: int


@dataclass
class Receipt:
    sku: str
    total: int


# -- outcomes -----------------------------------------------------------------------


def test_sync_typed_handler_reports_started_then_completed_with_encoded_output(nats_url, run):
    w = Worker(nats_url, worker_id="w-greet")
    seen: list[TaskContext] = []

    @w.task("greet")
    def greet(ctx: TaskContext, name: str) -> str:
        seen.append(ctx)
        return f"Hello, {name or 'World'}!"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "greet", "r1", "Ada", traceparent=TP)
            events = await inbox.until("step.completed")
            info = await js.consumer_info(TASK_STREAM, "workers-greet")
            await eventually(lambda: drained(js))
        await nc.close()
        return events, inbox.headers, info.config

    events, headers, config = run(body())
    # A quick step sends no step.started: its result carries the start time.
    assert [e.type for e in events] == ["step.completed"]
    completed = events[0]
    assert completed.payload == "Hello, Ada!"
    assert parse_timestamp(completed.started_at) <= parse_timestamp(completed.timestamp)
    for event, header in zip(events, headers, strict=True):
        assert (event.run_id, event.step_id, event.attempt, event.worker_id) == ("r1", "s1", 1, "w-greet")
        assert event.trace_parent == TP
        assert header[MSG_ID] == f"r1.{event.id}.d1"  # the task message's sequence: the first
        parse_timestamp(event.timestamp)
    assert completed.id == "s1.1.step.completed"
    ctx = seen[0]
    assert (ctx.run_id, ctx.step_id, ctx.attempt, ctx.task, ctx.workflow_name, ctx.trace_parent) == (
        "r1",
        "s1",
        1,
        "greet",
        "wf",
        TP,
    )
    assert config.filter_subject == "task.greet.*"
    assert config.ack_policy == api.AckPolicy.EXPLICIT
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (30.0, 5, 1000)  # bounded: D4


def test_async_handler_and_handler_without_input_complete(nats_url, run):
    w = Worker(nats_url)

    @w.task("double")
    async def double(ctx: TaskContext, n: int) -> int:
        await asyncio.sleep(0.01)
        return n * 2

    @w.task("ping")
    def ping(ctx):
        return {"pong": ctx.run_id}

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            a, b = await Inbox.open(js, "ra"), await Inbox.open(js, "rb")
            await publish_task(js, "double", "ra", 21)
            await publish_task(js, "ping", "rb", {"ignored": True})
            results = await a.result(), await b.result()
        await nc.close()
        return results

    doubled, ponged = run(body())
    assert (doubled.type, doubled.payload) == ("step.completed", 42)
    assert (ponged.type, ponged.payload) == ("step.completed", {"pong": "rb"})


def test_struct_input_is_decoded_and_dataclass_output_encoded(nats_url, run):
    w = Worker(nats_url)

    @w.task("price")
    def price(ctx: TaskContext, order: Order) -> Receipt:
        assert isinstance(order, Order)
        return Receipt(order.sku, order.qty * 3)

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "price", "r1", {"sku": "ab-1", "qty": 4})
            result = await inbox.result()
        await nc.close()
        return result

    result = run(body())
    assert (result.type, result.payload) == ("step.completed", {"sku": "ab-1", "total": 12})


def test_input_that_does_not_decode_fails_permanently_without_running(nats_url, run):
    w = Worker(nats_url)
    calls: list[Order] = []

    @w.task("price")
    def price(ctx: TaskContext, order: Order) -> int:
        calls.append(order)
        return 0

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "price", "r1", {"sku": "ab-1", "qty": "many"})
            result = await inbox.result()
            await eventually(lambda: drained(js))
        await nc.close()
        return result

    result = run(body())
    assert result.type == "step.failed" and not calls
    assert msgspec.to_builtins(result.payload) == {
        "error": "input does not match Order: Expected `int`, got `str` - at `$.qty`",
        "failure_type": "permanent",
    }


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "payload"),
    [
        (Permanent("card declined"), {"error": "card declined", "failure_type": "permanent"}),
        (Boom("disk full"), {"error": "Boom: disk full", "failure_type": "transient"}),
        (
            RateLimited("slow down", retry_after=2.5),
            {"error": "slow down", "failure_type": "rate_limited", "retry_after_ms": 2500},
        ),
    ],
    ids=["permanent", "transient", "rate_limited"],
)
def test_handler_exceptions_become_failure_types(nats_url, run, error, payload):
    w = Worker(nats_url)
    calls = []

    @w.task("charge")
    def charge(ctx: TaskContext, data) -> None:
        calls.append(data)
        raise error

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "charge", "r1", {"amount": 5}, attempt=2)
            result = await inbox.result()
            await eventually(lambda: drained(js))  # acked: the engine decides retries
        await nc.close()
        return result

    result = run(body())
    assert (result.type, result.attempt, result.id) == ("step.failed", 2, "s1.2.step.failed")
    assert msgspec.to_builtins(result.payload) == payload
    assert calls == [{"amount": 5}]


# -- concurrency, groups, acks ------------------------------------------------------


def test_max_concurrent_bounds_running_handlers_and_is_reached(nats_url, run):
    w = Worker(nats_url, max_concurrent=3)
    lock, now, peak = threading.Lock(), [0], [0]

    @w.task("slow")
    def slow(ctx: TaskContext, i: int) -> int:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.3)
        with lock:
            now[0] -= 1
        return i

    async def body():
        nc, js = await engine_js(nats_url)
        inboxes = [await Inbox.open(js, f"r{i}") for i in range(9)]
        async with running(w):
            for i in range(9):
                await publish_task(js, "slow", f"r{i}", i)
            results = [await inbox.result(timeout=15) for inbox in inboxes]
        await nc.close()
        return results

    results = run(body())
    assert [r.payload for r in results] == list(range(9))
    assert peak[0] == 3


def test_group_worker_takes_only_its_groups_tasks(nats_url, run):
    w = Worker(nats_url, groups=["gpu"])

    @w.task("render")
    def render(ctx: TaskContext, data) -> str:
        return "rendered"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            gpu, plain = await Inbox.open(js, "rgpu"), await Inbox.open(js, "rplain")
            await publish_task(js, "render", "rplain", group=None)
            await publish_task(js, "render", "rgpu", group="gpu")
            result = await gpu.result()
            await plain.assert_empty(wait=1.0)
            left = await queued(js)
            config = (await js.consumer_info(TASK_STREAM, "workers-render+gpu")).config
        await nc.close()
        return result, left, config

    result, left, config = run(body())
    assert result.payload == "rendered"
    assert left == 1  # task.render.rplain waits for a worker without a group
    assert config.filter_subject == "task.render.gpu.*"


def _job_until(nats_url: str, release: threading.Event, calls: list[int]) -> Worker:
    """A worker whose task ``job`` runs until ``release`` is set, noting each attempt."""
    w = Worker(nats_url)

    @w.task("job")
    def job(ctx: TaskContext) -> str:
        calls.append(ctx.attempt)
        release.wait(10)
        return "done"

    return w


async def _started_with_its_inbox_gone(js) -> None:
    """Dispatch ``job`` for run r1, wait until it runs, then take the inbox away."""
    inbox = await Inbox.open(js, "r1")
    await publish_task(js, "job", "r1")
    assert (await inbox.next()).type == "step.started"
    await js.delete_stream(INBOX_STREAM)  # the result cannot be stored now


async def _stored_result(js):
    """Bring the inbox back; the result stored there once the task is settled."""
    await ensure_resources(js)
    result = await (await Inbox.open(js, "r1")).result(timeout=15)
    await eventually(lambda: drained(js))
    return result


def test_task_is_acked_only_after_its_result_fact_is_stored(nats_url, run):
    """The inbox cannot take the result for a moment (as while JetStream elects a leader):
    the worker holds the task and tries again, and acks once the result is stored; the
    handler's work is not thrown away."""
    release, calls = threading.Event(), []
    w = _job_until(nats_url, release, calls)

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            await _started_with_its_inbox_gone(js)
            release.set()
            await asyncio.sleep(0.5)
            held = await queued(js)
            result = await _stored_result(js)
        await nc.close()
        return held, result

    held, result = run(body())
    assert held == 1  # not acked while the result could not be stored
    assert result.payload == "done"
    assert len(calls) == 1


def test_a_result_that_cannot_be_stored_for_long_naks_the_task_to_run_again(nats_url, run, monkeypatch):
    from dagnats.infra import task_context

    monkeypatch.setattr(task_context, "REPORT_RETRY_FOR", 0.3)
    release, calls = threading.Event(), []
    w = _job_until(nats_url, release, calls)

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            await _started_with_its_inbox_gone(js)
            release.set()
            await eventually(lambda: _ran(calls, 2), timeout=10)  # NAKed and delivered again
            result = await _stored_result(js)
        await nc.close()
        return result

    assert run(body()).payload == "done"
    assert len(calls) >= 2


async def _ran(calls: list, times: int) -> bool:
    return len(calls) >= times


def test_a_task_published_again_reports_anew_when_its_first_report_was_dropped(nats_url, run):
    """The engine dropped the first report (it came before the record dispatching its
    attempt, for longer than the engine waits: ``RunActor._early``); when that record lands
    its task, neither queued nor answered, goes out again. The new task message's report is
    not taken for a duplicate of the dropped one: its ``Nats-Msg-Id`` names the task message."""
    from dagnats.domain.actions import EnqueueTask
    from dagnats.domain.events import TaskPayload
    from dagnats.infra.engine.ports import publish_tasks

    w = Worker(nats_url, worker_id="w-greet")

    @w.task("greet")
    def greet(ctx: TaskContext, name: str) -> str:
        return f"Hello, {name}!"

    task = EnqueueTask(
        task="greet", payload=TaskPayload(task_id="r1.s1", run_id="r1", step_id="s1", task="greet", input="Ada")
    )

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_tasks(js, [task])
            dropped = await inbox.result()  # read and acked: the engine dropped it
            await eventually(lambda: drained(js))
            await publish_tasks(js, [task])  # the record lands: its task is a duplicate, and nowhere
            again = await inbox.result()
        await nc.close()
        return dropped, again, inbox.headers

    dropped, again, headers = run(body())
    assert dropped.id == again.id == "s1.1.step.completed"
    assert [h[MSG_ID] for h in headers] == ["r1.s1.1.step.completed.d1", "r1.s1.1.step.completed.d2"]


def test_a_long_handler_reports_its_start_before_its_result(nats_url, run):
    w = Worker(nats_url)

    @w.task("slowish")
    async def slowish(ctx: TaskContext) -> str:
        await asyncio.sleep(0.3)
        return "done"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "slowish", "r1")
            started = await inbox.next()
            completed = await inbox.result()
        await nc.close()
        return started, completed

    started, completed = run(body())
    assert started.type == "step.started" and completed.type == "step.completed"
    assert completed.started_at == ""  # the start was reported on its own
    gap = parse_timestamp(completed.timestamp) - parse_timestamp(started.timestamp)
    assert gap.total_seconds() >= 0.25  # started carries when the handler began, not when it was sent


def test_graceful_stop_lets_a_running_handler_finish_and_report(nats_url, run):
    w = Worker(nats_url)

    @w.task("job")
    async def job(ctx: TaskContext) -> str:
        await asyncio.sleep(1.0)
        return "finished"

    async def body():
        nc, js = await engine_js(nats_url)
        await w.start()
        inbox, later = await Inbox.open(js, "r1"), await Inbox.open(js, "r2")
        await publish_task(js, "job", "r1")
        assert (await inbox.next()).type == "step.started"
        stopping = asyncio.create_task(w.stop())
        await asyncio.sleep(0.1)
        await publish_task(js, "job", "r2")  # published while draining: not taken
        await stopping
        result = await inbox.result(timeout=1)
        await later.assert_empty(wait=0.5)
        left = await queued(js)
        await nc.close()
        return result, left

    result, left = run(body())
    assert result.payload == "finished"
    assert left == 1


def test_task_outliving_the_drain_timeout_is_returned_to_the_queue(nats_url, run):
    first = Worker(nats_url, drain_timeout=0.3)
    second = Worker(nats_url, worker_id="w-second")

    @first.task("job")
    async def stuck(ctx: TaskContext) -> str:
        await asyncio.sleep(30)
        return "never"

    @second.task("job")
    def quick(ctx: TaskContext) -> str:
        return "quick"

    async def body():
        nc, js = await engine_js(nats_url)
        inbox = await Inbox.open(js, "r1")
        await first.start()
        await publish_task(js, "job", "r1")
        assert (await inbox.next()).type == "step.started"
        began = time.monotonic()
        await first.stop()
        stop_took = time.monotonic() - began
        async with running(second):
            result = await inbox.result(timeout=5)
        await nc.close()
        return stop_took, result

    stop_took, result = run(body())
    assert stop_took < 3
    assert (result.payload, result.worker_id) == ("quick", "w-second")


# -- crashes and restarts -----------------------------------------------------------

DOOMED_WORKER = """
import time
from dagnats.infra.worker import Worker

w = Worker(worker_id="doomed", ack_wait=2.0)   # the URL comes from DAGNATS_NATS_URL

@w.task("slow")
def slow(ctx):
    time.sleep(60)
    return "never"

if __name__ == "__main__":
    w.run()
"""


def test_task_of_a_killed_worker_is_redelivered_and_completed(nats_url, run, tmp_path):
    path = tmp_path / "doomed.py"
    path.write_text(DOOMED_WORKER)
    env = {**os.environ, "DAGNATS_NATS_URL": nats_url}
    proc = subprocess.Popen([sys.executable, str(path)], env=env)
    rescuer = Worker(nats_url, worker_id="rescuer", ack_wait=2.0)

    @rescuer.task("slow")
    def slow(ctx: TaskContext) -> str:
        return "rescued"

    async def body():
        nc, js = await engine_js(nats_url)
        inbox = await Inbox.open(js, "r1")
        await publish_task(js, "slow", "r1")
        started = await inbox.next(timeout=15)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        async with running(rescuer):
            events = await inbox.until("step.completed", timeout=10)
        await nc.close()
        return started, events

    try:
        started, events = run(body())
    finally:
        proc.kill()
        proc.wait()
    assert (started.type, started.worker_id) == ("step.started", "doomed")
    # The rescuer's step.started has the same id as the first: deduplicated.
    assert [(e.type, e.worker_id, e.payload) for e in events] == [("step.completed", "rescuer", "rescued")]


def test_worker_survives_a_nats_server_restart(nats_server, run):
    w = Worker(nats_server.url)

    @w.task("echo")
    def echo(ctx: TaskContext, data: str) -> str:
        return data

    async def body():
        nc, js = await engine_js(nats_server.url)
        async with running(w):
            inbox = await Inbox.open(js, "before")
            await publish_task(js, "echo", "before", "one")
            before = await inbox.result()
            await nc.close()
            nats_server.kill()
            await asyncio.sleep(1.5)  # fetches fail meanwhile; the worker keeps trying
            await nats_server.start()
            nc, js = await engine_js(nats_server.url)
            inbox = await Inbox.open(js, "after")
            await publish_task(js, "echo", "after", "two")
            after = await inbox.result(timeout=15)
        await nc.close()
        return before, after

    before, after = run(body(), timeout=40)
    assert (before.payload, after.payload) == ("one", "two")


# -- registration and loading ---------------------------------------------------------


def test_registration_refuses_bad_names_duplicates_and_signatures():
    w = Worker("nats://127.0.0.1:1")
    with pytest.raises(InvalidIdentifier):
        w.task("bad.name")

    @w.task("ok")
    def ok(ctx):
        return None

    with pytest.raises(TaskAlreadyRegistered):
        w.task("ok")(ok)
    with pytest.raises(TypeError, match="must take"):
        w.task("three")(lambda ctx, a, b: None)
    assert w.tasks == ["ok"] and w.worker_id.startswith("worker-") and len(w.worker_id) == 23


def test_default_nats_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DAGNATS_NATS_URL", "nats://10.0.0.1:4333")
    assert Worker().nats_url == "nats://10.0.0.1:4333"
    monkeypatch.delenv("DAGNATS_NATS_URL")
    assert Worker().nats_url == "nats://127.0.0.1:4222"


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_load_worker_finds_the_worker_defined_in_a_file(tmp_path):
    (tmp_path / "helpers_for_worker.py").write_text("GREETING = 'Hi'\n")
    path = write(
        tmp_path,
        "greeter.py",
        """
        from helpers_for_worker import GREETING
        from dagnats.infra.worker import Worker, TaskContext
        w = Worker("nats://127.0.0.1:1")
        alias = w

        @w.task("greet")
        def greet(ctx: TaskContext, name: str) -> str:
            return f"{GREETING}, {name}!"

        if __name__ == "__main__":
            w.run()
    """,
    )
    worker = load_worker(path)
    assert isinstance(worker, Worker) and worker.tasks == ["greet"]


def test_load_worker_reports_no_worker_and_several_workers(tmp_path):
    none = write(tmp_path, "none.py", "x = 1\n")
    several = write(
        tmp_path,
        "several.py",
        """
        from dagnats.infra.worker import Worker
        a = Worker("nats://127.0.0.1:1")
        b = Worker("nats://127.0.0.1:1")
    """,
    )
    with pytest.raises(WorkerLoadError, match=f"^no Worker found in {none}$"):
        load_worker(none)
    with pytest.raises(WorkerLoadError, match=f"^several Worker objects in {several}: a, b$"):
        load_worker(several)


def test_load_worker_refuses_a_file_that_runs_the_worker_at_import(tmp_path):
    path = write(
        tmp_path,
        "eager.py",
        """
        from dagnats.infra.worker import Worker
        w = Worker("nats://127.0.0.1:1")

        @w.task("t")
        def t(ctx):
            return None

        w.run()
    """,
    )
    with pytest.raises(WorkerLoadError, match="guard it with"):
        load_worker(path)


def test_long_task_is_kept_alive_past_ack_wait(nats_url, run):
    w = Worker(nats_url, ack_wait=1.0, max_concurrent=2)
    calls = []

    @w.task("long")
    def long(ctx: TaskContext) -> str:
        calls.append(ctx.attempt)
        ctx.heartbeat()  # safe from the handler's thread; the worker also sends its own
        time.sleep(2.5)  # in_progress every ack_wait/3
        return "done"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "long", "r1")
            result = await inbox.result()
            info = await js.consumer_info(TASK_STREAM, "workers-long")
        await nc.close()
        return result, info

    result, info = run(body())
    assert result.payload == "done"
    assert calls == [1] and info.num_redelivered == 0


def test_output_too_large_to_report_fails_permanently(nats_url, run):
    w = Worker(nats_url)

    @w.task("huge")
    def huge(ctx: TaskContext) -> str:
        return "x" * 2_000_000

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "huge", "r1")
            result = await inbox.result()
            await eventually(lambda: drained(js))
        await nc.close()
        return result

    result = run(body())
    assert result.type == "step.failed"
    assert result.failure.failure_type == "permanent"
    assert result.failure.error.startswith("output too large")


def start_worker_process(tmp_path, name: str, source: str, nats_url: str) -> tuple[subprocess.Popen, object]:
    """Run ``source`` as a worker script; its stdout and stderr go to ``<name>.log``."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    env = {**os.environ, "DAGNATS_NATS_URL": nats_url, "PYTHONFAULTHANDLER": "1"}
    log_path = tmp_path / f"{name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(path)], env=env, stdout=log, stderr=log)
    return proc, log_path


def exit_code(proc: subprocess.Popen, log_path, timeout: float) -> int:
    """The process's exit code; if it is still alive after ``timeout``, fail with its thread stacks."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack into the log
        proc.wait(10)
        pytest.fail(f"worker still alive {timeout} s after SIGTERM:\n{log_path.read_text()}")


POLITE_WORKER = """
import time
from dagnats.infra.worker import Worker

w = Worker(worker_id="polite")

@w.task("slow")
def slow(ctx):
    time.sleep(1.0)
    return "finished"

if __name__ == "__main__":
    w.run()
"""


def test_run_drains_on_sigterm_and_exits_cleanly(nats_url, run, tmp_path):
    proc, log_path = start_worker_process(tmp_path, "polite", POLITE_WORKER, nats_url)

    async def body():
        nc, js = await engine_js(nats_url)
        inbox = await Inbox.open(js, "r1")
        await publish_task(js, "slow", "r1")
        assert (await inbox.next(timeout=15)).type == "step.started"
        proc.send_signal(signal.SIGTERM)
        result = await inbox.result(timeout=10)
        await nc.close()
        return result

    try:
        result = run(body(), timeout=60)
        code = exit_code(proc, log_path, 20)  # generous: CI machines are loaded
    finally:
        proc.kill()
        proc.wait()
    assert (result.payload, result.worker_id, code) == ("finished", "polite", 0)


STUCK_WORKER = """
import threading
from dagnats.infra.worker import Worker

w = Worker(worker_id="stuck", drain_timeout=0.5)

@w.task("stuck")
def stuck(ctx):
    threading.Event().wait()  # never returns

if __name__ == "__main__":
    w.run()
"""


def test_a_worker_exits_after_the_drain_timeout_even_if_a_handler_hangs(nats_url, run, tmp_path):
    proc, log_path = start_worker_process(tmp_path, "stuck", STUCK_WORKER, nats_url)

    async def body():
        nc, js = await engine_js(nats_url)
        inbox = await Inbox.open(js, "r1")
        await publish_task(js, "stuck", "r1")
        assert (await inbox.next(timeout=15)).type == "step.started"
        proc.send_signal(signal.SIGTERM)
        await nc.close()

    try:
        run(body())
        code = exit_code(proc, log_path, 15)  # drain_timeout 0.5 s, then NAK and close: well inside
    finally:
        proc.kill()
        proc.wait()
    assert code == 0
    assert "1 task handlers still running after the drain timeout" in log_path.read_text()


ECHO_WORKER = """
from dagnats.infra.worker import Worker

w = Worker(worker_id="echo")

@w.task("echo")
def echo(ctx, data):
    return data

if __name__ == "__main__":
    w.run()
"""


def test_a_worker_stopped_while_nats_is_down_exits_without_a_traceback(nats_server, run, tmp_path):
    proc, log_path = start_worker_process(tmp_path, "echo", ECHO_WORKER, nats_server.url)

    async def body():
        nc, js = await engine_js(nats_server.url)
        inbox = await Inbox.open(js, "r1")
        await publish_task(js, "echo", "r1", "hi")
        result = await inbox.result(timeout=15)  # the worker is connected and working
        await nc.close()
        return result

    try:
        result = run(body())
        nats_server.kill()
        time.sleep(0.5)  # the worker notices the server is gone and starts reconnecting
        proc.send_signal(signal.SIGTERM)
        code = exit_code(proc, log_path, 15)
    finally:
        proc.kill()
        proc.wait()
    output = log_path.read_text()
    assert (result.payload, code) == ("hi", 0)
    assert "Traceback" not in output, output


def test_execution_is_traced_as_a_child_of_the_tasks_traceparent(nats_url, run, monkeypatch):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dagnats.infra import delivery_span

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(delivery_span, "_tracer", provider.get_tracer("dagnats.worker"))
    w = Worker(nats_url)
    inner = []

    @w.task("traced")
    def traced(ctx: TaskContext) -> None:
        inner.append(trace.get_current_span().get_span_context())  # visible in the pool thread
        raise Permanent("no")

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "traced", "r1", traceparent=TP)
            await inbox.result()
        await nc.close()

    run(body())
    (span,) = exporter.get_finished_spans()
    assert span.name == "executeTask traced" and span.kind == trace.SpanKind.CONSUMER
    assert format(span.context.trace_id, "032x") == TP.split("-")[1]
    assert format(span.parent.span_id, "016x") == TP.split("-")[2]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert inner[0].span_id == span.context.span_id


def test_a_worker_takes_a_comma_separated_list_of_servers(nats_url, run):
    w = Worker(f"{nats_url},nats://127.0.0.1:1", worker_id="w-list")

    @w.task("listed")
    def listed(ctx: TaskContext) -> str:
        return "ok"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "listed", "r1")
            result = await inbox.result()
        await nc.close()
        return result

    assert run(body()).payload == "ok"
