"""The metrics counted where things happen and the sampled gauges, as ``/metrics`` shows
them: in-flight tasks (engine and worker), DLQ depth, inbox lag per partition, timer
lateness, live actors, history appends and append conflicts."""

from __future__ import annotations

import asyncio
import re
import threading

import nats
import pytest

from dagnats.domain.errors import WrongLastSequence
from dagnats.infra import metrics
from dagnats.infra.worker import Permanent, Worker

from harness import EngineHarness

BLOCK = {"name": "m-block", "steps": [{"id": "wait", "task": "m-slow"}]}
DOOMED = {"name": "m-doomed", "steps": [{"id": "boom", "task": "m-fail"}]}
RETRIED = {
    "name": "m-retried",
    "steps": [{"id": "again", "task": "m-flaky", "retry": {"max_attempts": 2, "initial_delay": "50ms"}}],
}


def value(text: str, series: str, default: float | None = None) -> float:
    """The value of one series (``name{labels}``) in Prometheus text; fails if absent (no default)."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    if match is None and default is not None:
        return default
    assert match, f"{series} not in:\n{text}"
    return float(match[1])


def test_hot_path_metrics_and_gauges_arrive_with_plausible_values(nats_url, run):
    metrics.setup_metrics("test")
    entered, release, flaked = threading.Event(), threading.Event(), []
    w = Worker(nats_url, worker_id="metered")

    @w.task("m-slow")
    def slow(ctx, data=None):
        entered.set()
        release.wait(10)
        return "done"

    @w.task("m-fail")
    def fail(ctx, data=None):
        raise Permanent("no way")

    @w.task("m-flaky")
    def flaky(ctx, data=None):
        if not flaked:
            flaked.append(1)
            raise RuntimeError("once")
        return "ok"

    async def sampled(h: EngineHarness) -> str:
        metrics.set_readings(await h.engine.gauges.sample())
        return metrics.prometheus_text()

    async def body() -> tuple[str, str, float]:
        async with EngineHarness(nats_url) as h:
            await w.start()
            try:
                for definition in (BLOCK, DOOMED, RETRIED):
                    await h.client.register(definition)
                blocked = await h.client.start("m-block")
                await asyncio.to_thread(entered.wait, 10)
                busy = await sampled(h)
                release.set()
                await h.wait_status(blocked, "completed")
                await h.wait_status(await h.client.start("m-doomed"), "failed")
                retried = await h.client.start("m-retried")
                await h.wait_status(retried, "completed")
                text = metrics.prometheus_text()
                before = value(text, 'dagnats_history_appends_total{outcome="conflict"}', default=0)
                with pytest.raises(WrongLastSequence):  # as if another engine had written first
                    await h.engine.reader.store.append(retried, b"[]", 1, "m-conflict")
                for _ in range(100):  # the dead letter is stored after the run's failure
                    idle = await sampled(h)
                    if "dagnats_dlq_depth 1" in idle:
                        break
                    await asyncio.sleep(0.05)
                return busy, idle, before
            finally:
                await w.stop()

    busy, idle, conflicts_before = run(body())
    # While the handler runs: one task in flight, seen by the engine and by the worker.
    assert value(busy, "dagnats_actors") >= 1
    assert value(busy, "dagnats_tasks_in_flight") == 1
    assert value(busy, 'dagnats_worker_tasks_in_flight{task="m-slow"}') == 1
    # Afterwards: nothing in flight, nothing waiting in any partition's inbox, one dead letter.
    assert value(idle, "dagnats_tasks_in_flight") == 0
    assert value(idle, 'dagnats_worker_tasks_in_flight{task="m-slow"}') == 0
    assert value(idle, "dagnats_dlq_depth") == 1
    lags = re.findall(r'^dagnats_inbox_lag\{partition="(\w+)"\} (\S+)$', idle, re.MULTILINE)
    assert lags and all(float(lag) == 0 for _, lag in lags)
    # Counted where they happen: appends, the one conflict, the retry's timer.
    assert value(idle, 'dagnats_history_appends_total{outcome="ok"}') >= 6
    assert value(idle, 'dagnats_history_appends_total{outcome="conflict"}') == conflicts_before + 1
    late = value(idle, 'dagnats_timer_lateness_milliseconds_count{kind="retry"}')
    assert late >= 1 and value(idle, 'dagnats_timer_lateness_milliseconds_sum{kind="retry"}') >= 0


def test_only_the_engine_holding_partition_0_samples_the_clusters_figures(nats_url, run):
    """Dead letters and tasks are the cluster's figures: one engine reports them."""
    from types import SimpleNamespace

    from dagnats.infra.engine.engine_gauges import EngineGauges
    from dagnats.infra.engine.streams import ensure_resources

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_resources(js)

            async def live_count() -> int:
                return 0

            def engine(owned: dict[int, int]) -> SimpleNamespace:
                return SimpleNamespace(js=js, pullers={}, leases=SimpleNamespace(owned=owned), live_count=live_count)

            names = []
            for owned in ({0: 1, 1: 1}, {1: 1, 2: 1}):
                names.append(sorted({name for name, _, _ in await EngineGauges(engine(owned)).sample()}))
            return names
        finally:
            await nc.close()

    holder, other = run(body())
    assert holder == ["dagnats.actors", "dagnats.dlq.depth", "dagnats.tasks.in_flight", "dagnats.tasks.queued"]
    assert other == ["dagnats.actors"]


def test_the_gauge_sampler_stops_even_when_a_sample_loses_its_cancellation(run):
    """A cancellation lost inside a sample's await left the sampler running into its next
    sleep, and the engine's stop waited on it (about a minute, in test_engine_timers)."""
    from dagnats.infra.engine.engine_gauges import EngineGauges

    class Engine:
        pullers: dict = {}
        js = None

        async def live_count(self) -> int:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass  # lost, as a library's await may lose it
            return 0

    async def body() -> bool:
        gauges = EngineGauges(Engine(), interval=3600)  # a sampler left running sleeps an hour
        await gauges.start()
        await asyncio.sleep(0.1)  # in the sample
        try:
            await asyncio.wait_for(gauges.stop(), 8)
        except TimeoutError:
            return False  # stop() still waiting on the sampler
        return gauges._task is not None and gauges._task.done()

    assert run(body(), timeout=15) is True
