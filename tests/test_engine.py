"""The engine against a real nats-server: records, refolds, retries, recovers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import nats
from nats.errors import TimeoutError as NatsTimeoutError

from dagnats.domain.events import encode_record, format_timestamp, make_event
from dagnats.infra.wire import control
from dagnats.infra.wire.headers import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID
from dagnats.infra.wire.subjects import history_subject

from fakes import FakeClock
from harness import CHAIN3, EngineHarness, FakeWorker


def _types(events: list[dict]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["step_id"]) for e in events]


def test_chain_completes_with_each_output_passed_on(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3", {"n": 1})
            a = await FakeWorker(h.nc, "ta").complete({"n": 2})
            b = await FakeWorker(h.nc, "tb").complete({"n": 3})
            c = await FakeWorker(h.nc, "tc").complete({"n": 4})
            final = await h.wait_status(run_id, "completed")
            return a, b, c, final

    a, b, c, final = run(body())
    assert (a.input, b.input, c.input) == ({"n": 1}, {"n": 2}, {"n": 3})
    assert final["output"] == {"n": 4}
    assert [s["attempts"] for s in final["steps"].values()] == [1, 1, 1]


def test_foreign_append_makes_the_actor_refold_and_decide_again(nats_url, run, caplog):
    """Someone else writes history.<run>: the owner's conditional append fails (10071),
    it refolds the new record and re-decides instead of losing or duplicating anything."""

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3", "x")
            worker = FakeWorker(h.nc, "ta")
            task, msg = await worker.next()
            await h.wait_status(run_id, "running")
            # Write a step.started fact straight into the history, behind the actor's back.
            js = h.nc.jetstream()
            last = (await js.get_msg("WORKFLOW_HISTORY", subject=history_subject(run_id))).seq
            foreign = make_event(
                type="step.started",
                run_id=run_id,
                step_id="a",
                attempt=1,
                timestamp=format_timestamp(datetime.now(UTC)),
                worker_id="foreign",
                id="a.1.step.started",
            )
            await js.publish(
                history_subject(run_id),
                encode_record([foreign]),
                headers={MSG_ID: "foreign-1", EXPECTED_LAST_SUBJECT_SEQ: str(last)},
            )
            # The actor still believes `last` is the tail; this report forces a conflict.
            await worker.report(task, "step.completed", "done-a")
            await msg.ack()
            await FakeWorker(h.nc, "tb").complete("done-b")
            await FakeWorker(h.nc, "tc").complete("done-c")
            final = await h.wait_status(run_id, "completed")
            events = await h.client.events(run_id)
            return final, events

    caplog.set_level("INFO", logger="dagnats.run")
    final, events = run(body())
    assert any("refolding" in r.getMessage() for r in caplog.records)
    started = [e for e in events if e["type"] == "step.started" and e["step_id"] == "a"]
    assert [e.get("worker_id") for e in started] == ["foreign"]
    types = _types(events)
    assert types.count(("step.started", "a")) == 1
    assert types.count(("step.completed", "a")) == 1
    assert types.count(("step.queued", "b")) == 1
    assert final["output"] == "done-c"


def test_a_duplicate_report_is_recorded_once(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3")
            worker = FakeWorker(h.nc, "ta")
            task, msg = await worker.next()
            await worker.report(task, "step.completed", 1)
            # The same fact again under another message id escapes stream dedup:
            # the fold still records it once.
            await worker.report(task, "step.completed", 1, msg_id="other-id")
            await msg.ack()
            await FakeWorker(h.nc, "tb").complete(2)
            await FakeWorker(h.nc, "tc").complete(3)
            await h.wait_status(run_id, "completed")
            return await h.client.events(run_id)

    events = run(body())
    assert _types(events).count(("step.completed", "a")) == 1
    assert _types(events).count(("step.queued", "b")) == 1


def test_a_failed_attempt_is_retried_after_its_backoff(nats_url, run):
    wf = {
        "name": "retry1",
        "steps": [{"id": "a", "task": "ra", "retry": {"max_attempts": 2, "initial_delay": "200ms"}}],
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("retry1")
            worker = FakeWorker(h.nc, "ra")
            first = await worker.fail("flaky")
            second = await worker.fail("flaky again")
            third = await worker.complete("ok")
            final = await h.wait_status(run_id, "completed")
            return [first.attempt, second.attempt, third.attempt], final

    attempts, final = run(body())
    assert attempts == [1, 2, 3]
    assert final["steps"]["a"]["attempts"] == 3


def test_exhausted_retries_fail_the_run_naming_the_step(nats_url, run):
    wf = {
        "name": "retry2",
        "steps": [{"id": "a", "task": "rb", "retry": {"max_attempts": 1, "initial_delay": "100ms"}}],
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("retry2")
            worker = FakeWorker(h.nc, "rb")
            await worker.fail("nope")
            await worker.fail("still nope")
            return await h.wait_status(run_id, "failed")

    final = run(body())
    assert final["steps"]["a"]["status"] == "failed"
    assert "step a failed after 2 attempts: still nope" in final["error"]


def test_a_pending_backoff_fires_after_the_engine_restarts(nats_url, run):
    wf = {
        "name": "retry3",
        "steps": [{"id": "a", "task": "rc", "retry": {"max_attempts": 1, "initial_delay": "1500ms"}}],
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("retry3")
            await FakeWorker(h.nc, "rc").fail("first")
            await h.wait_step(run_id, "a", "retrying")
        # The engine is gone while the backoff is pending; a new one takes over.
        async with EngineHarness(nats_url) as h2:
            task = await FakeWorker(h2.nc, "rc").complete("second time lucky", timeout=10)
            final = await h2.wait_status(run_id, "completed")
            return task.attempt, final

    attempt, final = run(body())
    assert attempt == 2
    assert final["output"] == "second time lucky"


def test_a_step_timeout_fails_the_attempt_and_ignores_its_late_result(nats_url, run):
    wf = {
        "name": "slow",
        "steps": [{"id": "a", "task": "sl", "timeout": "300ms", "retry": {"max_attempts": 1, "initial_delay": "1ms"}}],
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("slow")
            worker = FakeWorker(h.nc, "sl")
            task1, msg1 = await worker.next()
            await worker.report(task1, "step.started")
            task2, msg2 = await worker.next(timeout=5)  # the timeout retried the step
            await worker.report(task1, "step.completed", "late")  # attempt 1 answers late
            await msg1.ack()
            await worker.report(task2, "step.started")
            await worker.report(task2, "step.completed", "on time")
            await msg2.ack()
            final = await h.wait_status(run_id, "completed")
            return task2.attempt, final, await h.client.events(run_id)

    attempt, final, events = run(body())
    assert attempt == 2
    assert final["output"] == "on time"
    failed = [e for e in events if e["type"] == "step.failed"]
    assert len(failed) == 1 and failed[0]["payload"]["error"] == "step timeout exceeded (300ms)"


def test_live_actors_stay_bounded_and_passivated_runs_carry_on(nats_url, run):
    async def body():
        async with EngineHarness(nats_url, max_live=4) as h:
            await h.client.register(CHAIN3)
            run_ids = [await h.client.start("chain3", i) for i in range(12)]
            for run_id in run_ids:
                await h.wait_status(run_id, "running")
            peak = await h.engine.live_count()
            for _ in run_ids:
                await FakeWorker(h.nc, "ta").complete("a")
                await FakeWorker(h.nc, "tb").complete("b")
                await FakeWorker(h.nc, "tc").complete("c")
            finals = [await h.wait_status(r, "completed") for r in run_ids]
            return peak, finals

    peak, finals = run(body(), timeout=60)
    assert peak <= 5
    assert all(f["output"] == "c" for f in finals)


def test_a_crashed_actor_is_rebuilt_from_history(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3")
            ports = h.engine.ports
            real_record = ports.record
            crashes = []

            def flaky_record(run_id, events, body, expected_seq, msg_id, tasks, *rest):
                if not crashes and tasks and tasks[0].payload.step_id == "b":
                    crashes.append(1)
                    real_record(run_id, events, body, expected_seq, msg_id, [], *rest)  # stored; the task is lost
                    raise RuntimeError("injected crash while dispatching b")
                return real_record(run_id, events, body, expected_seq, msg_id, tasks, *rest)

            ports.record = flaky_record
            await FakeWorker(h.nc, "ta").complete("a")
            # The crash happened after the record was appended: the rebuilt actor re-issues b.
            await FakeWorker(h.nc, "tb").complete("b", timeout=10)
            await FakeWorker(h.nc, "tc").complete("c")
            final = await h.wait_status(run_id, "completed")
            return crashes, final, await h.client.events(run_id)

    crashes, final, events = run(body())
    assert crashes == [1]
    assert final["output"] == "c"
    assert _types(events).count(("step.queued", "b")) == 1


def test_a_start_whose_first_record_was_stored_unanswered_is_taken_up_by_the_next_actor(nats_url, run):
    """A NATS node restarts under load: the run's first record is stored but the engine
    hears "no response from stream", and its task does not go out. The actor crashes; the
    start comes again, to a fresh actor whose append finds the history already there (and
    whose task publish fails too). It takes the run up as a rebuilt one: re-issues the lost
    task and lists the run as unfinished (the open index the crashed actor never wrote)."""
    from nats.js.errors import NoStreamResponseError

    from dagnats.infra.engine.history import open_key
    from dagnats.infra.wire.names import RUNS_BUCKET

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            ports = h.engine.ports
            real_record = ports.record
            starts = []

            def restarting(run_id, events, body, expected_seq, msg_id, tasks, *rest):
                if expected_seq == 0:  # the run's first record, while NATS restarts: its task is lost
                    starts.append(msg_id)
                    seq = real_record(run_id, events, body, expected_seq, msg_id, [], *rest)
                    if len(starts) == 1:
                        raise NoStreamResponseError()  # stored, but the answer did not come
                    return seq
                return real_record(run_id, events, body, expected_seq, msg_id, tasks, *rest)

            ports.record = restarting
            run_id = await h.client.start("chain3")
            task = await FakeWorker(h.nc, "ta").complete("a", timeout=10)
            kv = await h.nc.jetstream().key_value(RUNS_BUCKET)
            listed = await _eventually(lambda: kv.get(open_key(run_id, h.engine.partition_count)))
            await FakeWorker(h.nc, "tb").complete("b")
            await FakeWorker(h.nc, "tc").complete("c")
            final = await h.wait_status(run_id, "completed")
            return starts, task, listed, final, await h.client.events(run_id)

    starts, task, listed, final, events = run(body())
    assert len(starts) == 2  # the crashed actor's, and the redelivered start's (a conflict)
    assert task.attempt == 1 and listed.value
    assert final["output"] == "c"
    assert _types(events).count(("workflow.started", None)) == 1
    assert _types(events).count(("step.queued", "a")) == 1


def test_an_open_key_left_for_a_run_that_ended_is_taken_out_when_the_run_is_brought_up(nats_url, run):
    """An engine that held a run listed it as unfinished (its index tick) just as the run
    ended at the partition's next owner, after that owner had taken the open key out: the
    key stays, and whoever gains the partition brings the run up from it. Finding the run
    ended, the engine takes the key out, so it is not brought up at every takeover."""
    from dagnats.domain.partition import partition_of
    from dagnats.infra.engine.history import open_key, snapshot_key
    from dagnats.infra.wire.names import RUNS_BUCKET

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3")
            partition = partition_of(run_id, h.engine.partition_count)
            for task in ("ta", "tb", "tc"):
                await FakeWorker(h.nc, task).complete(task[1:])
            await h.wait_status(run_id, "completed")
            key = open_key(run_id, h.engine.partition_count)
            kv = await h.nc.jetstream().key_value(RUNS_BUCKET)
            await kv.put(key, (await kv.get(snapshot_key(run_id))).value)  # the late listing
            assert run_id in await h.engine.reader.store.open_runs(partition)
        async with EngineHarness(nats_url) as h:  # gains every partition, brings up the open runs
            kv = await h.nc.jetstream().key_value(RUNS_BUCKET)
            gone = await _eventually(lambda: _absent(kv, key))
            listed = await h.engine.reader.store.open_runs(partition)
            status = (await h.client.status(run_id))["status"]
        return gone, listed, status, run_id

    gone, listed, status, run_id = run(body())
    assert gone and run_id not in listed
    assert status == "completed"


async def _absent(kv, key: str) -> bool:
    from nats.js.errors import KeyNotFoundError

    try:
        await kv.get(key)
    except KeyNotFoundError:
        return True
    raise AssertionError(f"{key} is still there")


async def _eventually(read, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await read()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_unknown_and_hostile_run_ids_are_refused(nats_url, run):
    from dagnats.domain.errors import InvalidIdentifier, RunNotFound

    async def body():
        async with EngineHarness(nats_url) as h:
            results = []
            for run_id, expected in (
                ("0" * 32, RunNotFound),
                ("a.b", InvalidIdentifier),
                ("*", InvalidIdentifier),
                (">", InvalidIdentifier),
            ):
                try:
                    await h.client.status(run_id)
                except expected as err:
                    results.append(str(err))
            return results

    messages = run(body())
    assert len(messages) == 4


def test_a_fact_with_a_malformed_timestamp_does_not_poison_the_run(nats_url, run):
    import msgspec

    from dagnats.domain.events import make_event
    from dagnats.infra.wire.subjects import inbox_subject

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHAIN3)
            run_id = await h.client.start("chain3")
            worker = FakeWorker(h.nc, "ta")
            task, msg = await worker.next()
            bad = make_event(
                type="step.started",
                run_id=run_id,
                step_id="a",
                attempt=1,
                timestamp="yesterday-ish",
                trace_parent="not-a-traceparent",
                id="a.1.step.started",
            )
            await h.nc.jetstream().publish(inbox_subject(run_id), msgspec.json.encode(bad))
            await worker.report(task, "step.completed", "a")
            await msg.ack()
            await FakeWorker(h.nc, "tb").complete("b")
            await FakeWorker(h.nc, "tc").complete("c")
            return await h.wait_status(run_id, "completed"), await h.client.events(run_id)

    final, events = run(body())
    started = [e for e in events if e["type"] == "step.started"][0]
    assert started["timestamp"] != "yesterday-ish" and started["trace_parent"] is None
    assert final["output"] == "c"


async def _queued_run_left_behind(nats_url: str) -> str:
    """A chain3 run whose first task is queued when its engine goes away."""
    async with EngineHarness(nats_url) as h:
        await h.client.register(CHAIN3)
        run_id = await h.client.start("chain3")
        await h.wait_step(run_id, "a", "queued")
    return run_id


def test_a_rebuilt_run_does_not_reissue_a_task_whose_result_waits_in_the_inbox(nats_url, run):
    """Recovery publishes again only tasks that are neither queued nor answered."""

    async def body():
        run_id = await _queued_run_left_behind(nats_url)
        # Engine gone. The worker answers meanwhile; its result waits in the inbox.
        nc = await nats.connect(nats_url)
        worker = FakeWorker(nc, "ta")
        task, msg = await worker.next()
        await worker.report(task, "step.completed", "a")
        await msg.ack()
        async with EngineHarness(nats_url) as h2:
            await FakeWorker(h2.nc, "tb").complete("b")
            await FakeWorker(h2.nc, "tc").complete("c")
            await h2.wait_status(run_id, "completed")
            try:
                extra = await worker.sub.fetch(1, timeout=1.0)
            except NatsTimeoutError:
                extra = []
        await nc.close()
        return extra

    extra = run(body())
    assert extra == []  # step a was not dispatched a second time


def test_a_rebuilt_run_reissues_a_task_that_was_lost(nats_url, run):
    async def body():
        run_id = await _queued_run_left_behind(nats_url)
        # Lose the queued task behind the engine's back (as a purge would).
        nc = await nats.connect(nats_url)
        await nc.jetstream().purge_stream("TASK_QUEUES")
        await nc.close()
        async with EngineHarness(nats_url) as h2:
            task = await FakeWorker(h2.nc, "ta").complete("a", timeout=10)
            await FakeWorker(h2.nc, "tb").complete("b")
            await FakeWorker(h2.nc, "tc").complete("c")
            return task.attempt, await h2.wait_status(run_id, "completed")

    attempt, final = run(body())
    assert attempt == 1 and final["output"] == "c"


def test_a_poison_run_is_quarantined_while_other_runs_carry_on_and_resumes_once_healed(nats_url, run, caplog):
    caplog.set_level("ERROR", logger="dagnats.directory")
    clock = FakeClock()

    async def body():
        async with EngineHarness(nats_url, quarantine_retry=1.0, clock=clock) as h:
            await h.client.register(CHAIN3)
            poison = await h.client.start("chain3", "poison")
            await h.wait_step(poison, "a", "queued")
            ports, real_record = h.engine.ports, h.engine.ports.record
            attempts = []

            def failing_record(run_id, events, body, expected_seq, msg_id, tasks, *rest):
                if run_id == poison and healed == []:
                    attempts.append(1)
                    raise RuntimeError("injected: this run's decisions cannot be stored")
                return real_record(run_id, events, body, expected_seq, msg_id, tasks, *rest)

            healed: list[int] = []
            ports.record = failing_record
            await FakeWorker(h.nc, "ta").complete("a")  # the poison run's fact now crashes its actor
            await _until(lambda: any("quarantined" in r.getMessage() for r in caplog.records))
            healthy = await h.client.start("chain3", "fine")
            for task in ("ta", "tb", "tc"):
                await FakeWorker(h.nc, task).complete(task)
            other = await h.wait_status(healthy, "completed")
            tries_while_quarantined = len(attempts)  # the clock has not moved: no try since
            healed.append(1)
            clock.advance(1.0)  # the retry period is over: the next redelivery gets through
            await FakeWorker(h.nc, "tb").complete("b", timeout=15)
            await FakeWorker(h.nc, "tc").complete("c")
            return other, tries_while_quarantined, await h.wait_status(poison, "completed", timeout=15)

    other, tries, final = run(body(), timeout=60)
    assert other["output"] == "tc"
    # Five quick tries, perhaps the first of the quarantine, then none while time stands still.
    assert tries in (5, 6)
    assert final["output"] == "c"


async def _until(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def test_requests_nested_thousands_of_levels_deep_are_refused_as_invalid(nats_url, run):
    # Not through the client (it refuses such values itself): straight onto the control plane.
    deep = b"[" * 5000 + b"]" * 5000
    bodies = {
        "run.start": b'{"workflow": "wf", "input": ' + deep + b"}",
        "workflow.register": b'{"definition": {"name": "deep", "steps": [{"id": "a", "task": "t", "input": '
        + deep
        + b"}]}}",
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            replies = {
                op: (await h.nc.request(control.subject(op), data, timeout=5)).data for op, data in bodies.items()
            }
            return replies, await h.client.workflows()

    replies, workflows = run(body())
    for op, reply in replies.items():
        error = msgspec.json.decode(reply)
        assert error["kind"] == "InvalidRequest", error
        assert error["error"] == f"invalid {op} request: nested too deeply (a value may nest at most 64 levels)"
    assert workflows == []


def test_dropping_a_task_that_a_worker_acked_meanwhile_is_not_an_error(nats_url, run):
    # Seen in an e2e drill: the work queue removed the acked task between the listing
    # and the delete, the server answered 10057 "no message found", the run's actor crashed.
    from dagnats.domain.actions import DropTask, EnqueueTask
    from dagnats.domain.events import TaskPayload
    from dagnats.infra.engine.bridge import LoopBridge
    from dagnats.infra.engine.ports import NatsTaskPort, publish_tasks
    from dagnats.infra.engine.streams import ensure_resources
    from dagnats.infra.wire.names import TASK_STREAM

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_resources(js, 1)
            payload = TaskPayload(task_id="r.s", run_id="r", step_id="s", task="t")
            await publish_tasks(js, [EnqueueTask(task="t", payload=payload)])

            class AckedMeanwhile:
                def __getattr__(self, name):
                    return getattr(js, name)

                async def delete_msg(self, stream, seq):
                    await js.delete_msg(stream, seq)  # the worker's ack, just before
                    return await js.delete_msg(stream, seq)

            port = NatsTaskPort(AckedMeanwhile(), LoopBridge(asyncio.get_running_loop()))
            await port._drop([DropTask("t", "r", "s", 1)])
            return (await js.stream_info(TASK_STREAM)).state.messages
        finally:
            await nc.close()

    assert run(body()) == 0


def test_a_duplicate_task_publish_goes_out_again_when_the_attempt_is_nowhere(nats_url, run):
    """A record's task may have gone out with an earlier try of the record (the engine died
    between publishing it and appending). If its worker took it and its report was dropped
    as stale, the task is neither queued nor answered: the duplicate publish is re-issued."""
    from dagnats.domain.actions import EnqueueTask
    from dagnats.domain.events import TaskPayload
    from dagnats.infra.engine.ports import publish_tasks
    from dagnats.infra.engine.streams import ensure_resources
    from dagnats.infra.wire.names import TASK_STREAM

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_resources(js, 1)
            taken = EnqueueTask(task="t", payload=TaskPayload(task_id="r.a", run_id="r", step_id="a", task="t"))
            waiting = EnqueueTask(task="t", payload=TaskPayload(task_id="r.b", run_id="r", step_id="b", task="t"))
            await publish_tasks(js, [taken, waiting])
            sub = await js.pull_subscribe("task.t.*", durable="w", stream=TASK_STREAM)
            (first,) = await sub.fetch(1, timeout=2)
            await first.ack_sync()  # a worker ran step a (acked, and the server says so); its report was lost
            await publish_tasks(js, [taken, waiting])  # the record lands: both are duplicates
            queued = []
            while True:  # until the queue is empty
                try:
                    (msg,) = await sub.fetch(1, timeout=2)
                except nats.errors.TimeoutError:
                    break
                queued.append((msg.header or {}).get("Nats-Msg-Id"))
                await msg.ack()
            return first.header.get("Nats-Msg-Id"), sorted(queued)
        finally:
            await nc.close()

    first, queued = run(body())
    assert first == "r.a.1"
    # Step b was still queued: not published twice. Step a was nowhere: re-issued.
    assert queued == ["r.a.1.reissued", "r.b.1"]
