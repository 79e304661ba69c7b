"""The control plane's contract: typed requests, errors that keep their attributes,
explicit run ids that conflict, and answers that always fit."""

from __future__ import annotations

import asyncio

import pytest

from dagnats.domain.errors import InvalidRequest, InvalidRunState, RunAlreadyStarted, RunNotFound, Unavailable

from harness import EngineHarness, FakeWorker

ONE = {"name": "cp-one", "steps": [{"id": "a", "task": "cp-a"}]}


def test_a_request_field_of_the_wrong_type_is_a_clear_error_not_an_internal_one(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            errors = []
            for op, request in (
                ("run.list", {"limit": "x"}),
                ("run.list", {"limit": 0}),
                ("run.list", {"status": "sleepy"}),
                ("run.events", {"run_id": 5}),
                ("run.list", {"cursor": "not-one-of-ours"}),
                ("run.explode", {}),
            ):
                with pytest.raises(InvalidRequest) as caught:
                    await h.client.request(op, request)
                errors.append(caught.value)
            return errors

    errors = run(body())
    assert "Expected `int`, got `str` - at `$.limit`" in str(errors[0]) and errors[0].operation == "run.list"
    assert "limit must be between 1 and 10000" in str(errors[1])
    assert "unknown status 'sleepy'" in str(errors[2])
    assert "at `$.run_id`" in str(errors[3])
    assert "cursor" in str(errors[4])
    assert "unknown operation" in str(errors[5])


def test_errors_keep_their_attributes_across_the_control_plane(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)
            run_id = await h.client.start("cp-one")
            await FakeWorker(h.nc, "cp-a").complete("done")
            await h.client.wait(run_id, timeout=10)
            with pytest.raises(InvalidRunState) as terminal:
                await h.client.pause(run_id)
            with pytest.raises(RunNotFound) as missing:
                await h.client.status("no-such-run")
            return run_id, terminal.value, missing.value

    run_id, terminal, missing = run(body())
    assert (terminal.run_id, terminal.status, terminal.operation) == (run_id, "completed", "pause")
    assert missing.run_id == "no-such-run" and isinstance(missing, LookupError)


def test_a_stream_that_does_not_answer_is_unavailable_worth_asking_again_not_an_internal_error(nats_url, run):
    """A publish the stream leaves unanswered while JetStream elects leaders (a node restart)
    raises NoStreamResponseError; the caller hears Unavailable, which clients retry."""
    from nats.js.errors import NoStreamResponseError

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)

            async def unanswered(request):
                raise NoStreamResponseError()

            h.api.handlers["run.start"] = unanswered
            with pytest.raises(Unavailable) as caught:
                await h.client.start("cp-one")
            return caught.value

    assert "NoStreamResponseError" in str(run(body()))


def test_starting_an_existing_run_id_again_returns_it_and_with_other_input_is_a_conflict(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)
            await h.client.register({"name": "cp-other", "steps": [{"id": "a", "task": "cp-a"}]})
            first = await h.client.start("cp-one", {"n": 1}, run_id="order-42")
            again = await h.client.request("run.start", {"workflow": "cp-one", "input": {"n": 1}, "run_id": "order-42"})
            conflicts = []
            for workflow, data in (("cp-one", {"n": 2}), ("cp-other", {"n": 1})):
                with pytest.raises(RunAlreadyStarted) as caught:
                    await h.client.start(workflow, data, run_id="order-42")
                conflicts.append(caught.value)
            await FakeWorker(h.nc, "cp-a").complete("done")
            done = await h.client.wait("order-42", timeout=10)
            after = await h.client.request("run.start", {"workflow": "cp-one", "input": {"n": 1}, "run_id": "order-42"})
            events = await h.client.events("order-42")
            return first, again, conflicts, done, after, events

    first, again, conflicts, done, after, events = run(body())
    assert first == "order-42" and again == {"run_id": "order-42", "deduplicated": True}
    assert all(c.run_id == "order-42" and c.workflow == "cp-one" for c in conflicts)
    assert "already started" in str(conflicts[0])
    assert done["status"] == "completed" and after["deduplicated"]
    assert [e["type"] for e in events].count("workflow.started") == 1


def test_racing_starts_of_one_run_id_start_it_once_and_the_rest_hear_the_same_run_or_a_conflict(nats_url, run):
    """Starts with one explicit run id, all at once: each reads an empty history before any is
    stored, so the run's owner tells them apart (the first stores it; the others hear their
    start came after one, and compare). The starts go to the history: none to the inbox."""
    from dagnats.infra.wire.names import INBOX_STREAM

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)

            async def start(n: int):
                try:
                    return await h.client.request(
                        "run.start", {"workflow": "cp-one", "input": {"n": n % 2}, "run_id": "race-1"}
                    )
                except RunAlreadyStarted as err:
                    return err

            answers = await asyncio.gather(*(start(n) for n in range(40)))
            events = await h.client.events("race-1")
            inbox = (await h.nc.jetstream().stream_info(INBOX_STREAM)).state.messages
            return answers, events, inbox

    answers, events, inbox = run(body())
    started = [a for a in answers if isinstance(a, dict) and not a.get("deduplicated")]
    assert started == [{"run_id": "race-1"}]
    stored_input = next(e for e in events if e["type"] == "workflow.started")["payload"]["input"]["n"]
    same = [n for n, a in enumerate(answers) if n % 2 == stored_input and a not in started]
    other = [n for n in range(40) if n % 2 != stored_input]
    assert all(answers[n] == {"run_id": "race-1", "deduplicated": True} for n in same)
    assert all(isinstance(answers[n], RunAlreadyStarted) and answers[n].run_id == "race-1" for n in other)
    assert [e["type"] for e in events].count("workflow.started") == 1
    assert inbox == 0


def test_a_start_no_owner_takes_reads_the_history_before_the_inbox_takes_it(nats_url, run):
    """A start with an explicit run id and nothing to admit goes to the run's owner unread;
    when no owner takes it (none holds the partition, or not in time), the history is read
    before the inbox is sent it: the same start again is the run, other input a conflict,
    and the run never holds a second start."""
    from dagnats.infra.wire.handoff import NOT_STORED

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)
            first = await h.client.start("cp-one", {"n": 1}, run_id="no-owner-1")
            await FakeWorker(h.nc, "cp-a").complete("done")
            await h.client.wait("no-owner-1", timeout=10)

            async def nobody(event, body):
                return NOT_STORED

            h.api.starts._hand_over = nobody
            again = await h.client.request(
                "run.start", {"workflow": "cp-one", "input": {"n": 1}, "run_id": "no-owner-1"}
            )
            with pytest.raises(RunAlreadyStarted):
                await h.client.start("cp-one", {"n": 2}, run_id="no-owner-1")
            fresh = await h.client.start("cp-one", {"n": 3}, run_id="no-owner-2")  # through the inbox
            await FakeWorker(h.nc, "cp-a").complete("done")
            done = await h.client.wait("no-owner-2", timeout=10)
            events = await h.client.events("no-owner-1")
            return first, again, fresh, done, events

    first, again, fresh, done, events = run(body())
    assert first == "no-owner-1" and again == {"run_id": "no-owner-1", "deduplicated": True}
    assert fresh == "no-owner-2" and done["status"] == "completed"
    assert [e["type"] for e in events].count("workflow.started") == 1


def test_a_start_its_owner_answers_late_is_compared_with_a_start_the_owner_took_meanwhile(nats_url, run):
    """A start whose owner does not answer in time goes to the inbox, whose message id knows
    nothing of a racing start of the same run id that the busy owner stored meanwhile (in
    the history): the start waits for the run's first recorded start and compares, so other
    input is a conflict, the same input the run, and a start with no racer its own run.
    (An idempotency key makes the history be read before the handoff, found empty.)"""
    from dagnats.infra.wire.handoff import LATE

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)
            original = h.api.starts._hand_over
            racers = {"late-1": {"n": 1}, "late-2": {"n": 2}, "late-3": None}

            async def busy(event, body):
                if event.run_id not in racers:
                    return await original(event, body)
                racer = racers.pop(event.run_id)
                if racer is not None:  # while this handoff waits, another start is handed and stored
                    await h.client.start("cp-one", racer, run_id=event.run_id)
                return LATE

            h.api.starts._hand_over = busy

            async def start(run_id: str):
                try:
                    return await h.client.request(
                        "run.start",
                        {"workflow": "cp-one", "input": {"n": 2}, "run_id": run_id, "idempotency_key": run_id},
                    )
                except RunAlreadyStarted as err:
                    return err

            answers = [await start(run_id) for run_id in ("late-1", "late-2", "late-3")]
            worker = FakeWorker(h.nc, "cp-a")
            ends, starts = [], []
            for run_id in ("late-1", "late-2", "late-3"):
                await worker.complete("done")
                ends.append(await h.client.wait(run_id, timeout=10))
                events = await h.client.events(run_id)
                starts.append([e["payload"]["input"] for e in events if e["type"] == "workflow.started"])
            return answers, ends, starts

    answers, ends, starts = run(body())
    conflict, same, alone = answers
    assert isinstance(conflict, RunAlreadyStarted) and conflict.run_id == "late-1"
    assert same == {"run_id": "late-2", "deduplicated": True}
    assert alone == {"run_id": "late-3"}
    assert [e["status"] for e in ends] == ["completed"] * 3
    assert starts == [[{"n": 1}], [{"n": 2}], [{"n": 2}]]


def test_status_and_lists_read_while_hundreds_of_runs_start_and_end_never_fail(nats_url, run):
    # The engine's status and run list read the live runs while actors come and go:
    # they ask the owned read model, never a dict the actors mutate meanwhile.
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(ONE)
            done = asyncio.Event()
            reads = []

            async def read_all_the_time() -> None:
                while not done.is_set():
                    reads.append((await h.client.engine_status())["engine"]["live_runs"])
                    await h.client.runs(limit=50)

            async def churn() -> None:
                worker = FakeWorker(h.nc, "cp-a")
                run_ids = [await h.client.start("cp-one", n) for n in range(300)]
                for _ in run_ids:
                    await worker.complete("done")
                for run_id in run_ids:
                    await h.client.wait(run_id, timeout=30)

            readers = [asyncio.create_task(read_all_the_time()) for _ in range(4)]
            try:
                await churn()
            finally:
                done.set()
                await asyncio.gather(*readers)
            return reads

    reads = run(body(), timeout=120)
    assert len(reads) > 10 and max(reads) > 0
