"""The engine's streams and buckets, and the message schedules durable timers rely on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js import api
from nats.js.errors import APIError

from dagnats.domain.errors import InvalidIdentifier
from dagnats.domain.partition import DEFAULT_PARTITIONS, partition_of
from dagnats.infra.engine import streams
from dagnats.infra.engine.streams import (
    DEAD_LETTER_MAX_AGE,
    EVENT_MAX_AGE,
    KV_BUCKETS,
    ResourceError,
    ensure_resources,
    patiently,
    stream_configs,
    transform_partitions,
)
from dagnats.infra.wire import headers
from dagnats.infra.wire.names import INBOX_STREAM
from dagnats.infra.wire.subjects import event_subject, history_subject, inbox_subject, schedule_subject, task_subject

LIMITS, WORK_QUEUE = api.RetentionPolicy.LIMITS, api.RetentionPolicy.WORK_QUEUE
ENGINE_STREAMS = {
    "WORKFLOW_HISTORY",
    "RUN_INBOX",
    "TASK_QUEUES",
    "EVENTS",
    "DEAD_LETTERS",
}


def at(seconds: float) -> str:
    """A `Nats-Schedule` value due `seconds` from now (RFC 3339, UTC)."""
    due = datetime.now(UTC) + timedelta(seconds=seconds)
    return "@at " + due.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def schedule(run_id: str, timer_id: str, seconds: float, **extra: str) -> dict[str, str]:
    """Headers of a one-shot timer firing into the run's inbox."""
    return {
        headers.SCHEDULE: at(seconds),
        headers.SCHEDULE_TARGET: inbox_subject(run_id),
        **extra,
    }


async def engine_js(url: str):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_resources(js)
    return nc, js


def test_ensure_resources_is_idempotent_sequentially_and_concurrently(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        await ensure_resources(js)
        other = await nats.connect(nats_url)
        await asyncio.gather(ensure_resources(js), ensure_resources(other.jetstream()), ensure_resources(js))
        names = {info.config.name for info in await js.streams_info()}
        await other.close()
        await nc.close()
        return names

    assert run(body()) == ENGINE_STREAMS | {f"KV_{bucket}" for bucket in KV_BUCKETS}


def test_streams_have_the_configured_retention_and_limits(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        configs = {name: (await js.stream_info(name)).config for name in ENGINE_STREAMS}
        await nc.close()
        return configs

    configs = run(body())
    expected = {
        "WORKFLOW_HISTORY": (["history.>"], LIMITS, 0),
        "RUN_INBOX": (["inbox.>", "schedule.>"], WORK_QUEUE, 0),
        "TASK_QUEUES": (["task.>"], WORK_QUEUE, 0),
        "EVENTS": (["event.>"], LIMITS, EVENT_MAX_AGE),
        "DEAD_LETTERS": (["dead.>"], LIMITS, DEAD_LETTER_MAX_AGE),
    }
    for name, (subjects, retention, max_age) in expected.items():
        config = configs[name]
        assert (config.subjects, config.retention, config.max_age) == (subjects, retention, max_age), name
        assert config.storage == api.StorageType.FILE
        assert config.num_replicas == 1
    assert configs["RUN_INBOX"].allow_msg_schedules
    assert transform_partitions(configs["RUN_INBOX"]) == DEFAULT_PARTITIONS
    assert all(config.allow_direct for config in configs.values())
    assert configs["WORKFLOW_HISTORY"].duplicate_window == 120


def test_kv_buckets_keep_one_revision_per_key(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        statuses = [await (await js.key_value(bucket)).status() for bucket in KV_BUCKETS]
        await nc.close()
        return statuses

    for status in run(body()):
        assert status.history == 1
        assert status.stream_info.config.storage == api.StorageType.FILE


def test_ensure_resources_updates_a_stream_created_with_other_settings(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name="EVENTS", subjects=["event.>"], max_age=60))
        await js.create_key_value(api.KeyValueConfig(bucket="signals", history=5))
        await ensure_resources(js)
        events = (await js.stream_info("EVENTS")).config
        signals = await (await js.key_value("signals")).status()
        await nc.close()
        return events, signals

    events, signals = run(body())
    assert events.max_age == EVENT_MAX_AGE
    assert signals.history == 1


async def inbox_reader(js):
    """A consumer of the inbox, as the engine's (it acks: the work queue then forgets)."""
    return await js.pull_subscribe("inbox.>", durable="engine", stream=INBOX_STREAM)


async def fetch_all(sub, seconds: float) -> list:
    received, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            for msg in await sub.fetch(1, timeout=min(left, 0.5)):
                await msg.ack()
                received.append(msg)
        except nats.errors.TimeoutError:
            continue
    return received


def test_message_schedule_fires_into_the_run_inbox_with_body_and_headers(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        sub = await inbox_reader(js)
        sched = schedule_subject("run1", "sleep-1")
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        hdrs = schedule("run1", "sleep-1", 0.5, **{headers.TRACEPARENT: traceparent, "Dagnats-Timer": "sleep-1"})
        await js.publish(sched, b'{"timer":"sleep-1"}', headers=hdrs)
        (fired,) = await fetch_all(sub, 2.0)
        left = await js.stream_info(INBOX_STREAM, subjects_filter="schedule.>")
        await nc.close()
        return fired, traceparent, sched, left

    fired, traceparent, sched, left = run(body())
    assert fired.subject == f"inbox.{partition_of('run1', DEFAULT_PARTITIONS)}.run1"  # filed under its partition
    assert fired.data == b'{"timer":"sleep-1"}'
    assert fired.headers[headers.TRACEPARENT] == traceparent
    assert fired.headers["Dagnats-Timer"] == "sleep-1"
    assert fired.headers[headers.SCHEDULER] == sched
    assert fired.headers[headers.SCHEDULE_NEXT] == headers.SCHEDULE_NEXT_PURGE
    assert not left.state.subjects  # a fired @at schedule removes itself


def test_publishing_a_schedule_again_replaces_it(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        sub = await inbox_reader(js)
        await js.publish(schedule_subject("run1", "t1"), b"first", headers=schedule("run1", "t1", 0.3))
        await js.publish(schedule_subject("run1", "t1"), b"second", headers=schedule("run1", "t1", 0.6))
        received = await fetch_all(sub, 1.5)
        await nc.close()
        return received

    filed = f"inbox.{partition_of('run1', DEFAULT_PARTITIONS)}.run1"
    assert [(msg.subject, msg.data) for msg in run(body())] == [(filed, b"second")]


def test_purging_a_schedule_subject_cancels_the_timer(nats_url, run):
    async def body():
        nc, js = await engine_js(nats_url)
        sub = await inbox_reader(js)
        await js.publish(schedule_subject("runA", "t1"), b"cancelled", headers=schedule("runA", "t1", 0.4))
        await js.publish(schedule_subject("runB", "t1"), b"kept", headers=schedule("runB", "t1", 0.6))
        await js.purge_stream(INBOX_STREAM, subject=schedule_subject("runA", "t1"))
        received = await fetch_all(sub, 1.5)
        await nc.close()
        return received

    filed = f"inbox.{partition_of('runB', DEFAULT_PARTITIONS)}.runB"
    assert [(msg.subject, msg.data) for msg in run(body())] == [(filed, b"kept")]


def test_schedule_due_while_the_server_was_down_fires_on_restart(nats_server, run):
    async def publish():
        nc, js = await engine_js(nats_server.url)
        await js.publish(schedule_subject("run1", "t1"), b"late", headers=schedule("run1", "t1", 0.5))
        await nc.close()

    async def first_fired():
        nc = await nats.connect(nats_server.url)
        (fired,) = await fetch_all(await inbox_reader(nc.jetstream()), 5.0)
        await nc.close()
        return fired

    run(publish())
    nats_server.kill()
    time.sleep(0.8)
    nats_server.start_sync()
    assert run(first_fired()).data == b"late"


def test_subject_builders_put_ids_in_their_place():
    assert history_subject("r-1") == "history.r-1"
    assert inbox_subject("r-1") == "inbox.r-1"
    assert task_subject("greet", "r-1") == "task.greet.r-1"
    assert task_subject("greet", "r-1", group="gpu") == "task.greet.gpu.r-1"
    assert schedule_subject("r-1", "t_2") == "schedule.r-1.t_2"
    assert event_subject("order_paid") == "event.order_paid"


@pytest.mark.parametrize("bad", ["", "*", ">", "a.b", "a b", "x" * 65, None])
def test_subject_builders_refuse_ids_that_are_not_single_tokens(bad):
    with pytest.raises(InvalidIdentifier) as caught:
        history_subject(bad)
    assert "run id" in str(caught.value)


def test_stream_configs_carry_the_replica_count():
    assert {config.num_replicas for config in stream_configs(3)} == {3}


def test_ensure_resources_creates_replicated_resources_on_a_cluster(cluster3, run, publish_retrying):
    async def body():
        clients = [await nats.connect(server.url) for server in cluster3[:2]]
        jss = [nc.jetstream() for nc in clients]
        await asyncio.gather(*(ensure_resources(js, replicas=3) for js in jss))
        history = await jss[0].stream_info("WORKFLOW_HISTORY")
        runs = await jss[1].stream_info("KV_workflow_runs")
        ack = await publish_retrying(jss[0], history_subject("r1"), b"{}", headers={headers.MSG_ID: "r1:1"})
        for nc in clients:
            await nc.close()
        return history, runs, ack

    history, runs, ack = run(body())
    assert history.config.num_replicas == 3 and len(history.cluster.replicas) == 2
    assert runs.config.num_replicas == 3
    assert ack.seq == 1


def _refusing(answers: list[int | None]):
    """A creation that is refused with the given JetStream error codes, then succeeds (None)."""
    calls: list[int | None] = []

    async def create():
        code = answers[len(calls)]
        calls.append(code)
        if code is not None:
            raise ResourceError("workflow_defs", APIError(code=503, err_code=code, description="refused"))
        return "created"

    return create, calls


def test_a_creation_a_forming_cluster_cannot_place_yet_is_retried(run, monkeypatch):
    monkeypatch.setattr(streams.asyncio, "sleep", _no_wait)
    # 10005: no suitable peers for placement; 10008: JetStream temporarily unavailable.
    create, calls = _refusing([10005, 10008, None])
    assert run(patiently(create)) == "created"
    assert calls == [10005, 10008, None]


def test_a_creation_refused_for_good_fails_at_once_and_a_placement_failure_in_the_end(run, monkeypatch):
    monkeypatch.setattr(streams.asyncio, "sleep", _no_wait)
    create, calls = _refusing([10058, None])  # a configuration that cannot be updated
    with pytest.raises(ResourceError, match="workflow_defs"):
        run(patiently(create))
    assert calls == [10058]
    create, calls = _refusing([10005] * 8)
    with pytest.raises(ResourceError) as refused:
        run(patiently(create))
    assert refused.value.err_code == 10005 and len(calls) == 8


async def _no_wait(_seconds: float) -> None:
    return None


def test_the_server_files_each_run_under_the_partition_the_engine_computes(nats_url, run):
    """The inbox's subject transform (the server's partition()) and domain.partition agree,
    and the count first recorded stays whatever a later start asks for."""
    run_ids = [f"run-{n}-{n * 7919 % 1000}" for n in range(200)] + ["a", "Z", "0", "_-_", "x" * 64]

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        first = await ensure_resources(js, partitions=4)
        again = await ensure_resources(js, partitions=8)
        for run_id in run_ids:
            await js.publish(inbox_subject(run_id), b"{}")
        filed = (await js.stream_info(INBOX_STREAM, subjects_filter="inbox.>")).state.subjects
        await nc.close()
        return first, again, filed

    first, again, filed = run(body())
    assert (first, again) == (4, 4)
    assert set(filed) == {f"inbox.{partition_of(run_id, 4)}.{run_id}" for run_id in run_ids}


def test_an_inbox_stream_from_before_partitions_gains_the_transform(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(
                name=INBOX_STREAM,
                subjects=["inbox.>", "schedule.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                allow_msg_schedules=True,
            )
        )
        await js.publish(inbox_subject("old"), b"{}")
        count = await ensure_resources(js, partitions=5)
        await js.publish(inbox_subject("new"), b"{}")
        filed = (await js.stream_info(INBOX_STREAM, subjects_filter="inbox.>")).state.subjects
        await nc.close()
        return count, filed

    count, filed = run(body())
    assert count == 5
    assert set(filed) == {"inbox.old", f"inbox.{partition_of('new', 5)}.new"}
