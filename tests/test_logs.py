"""Log lines about a run carry its run, step and trace ids; JSON on request; OTLP export when configured."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading

import msgspec
import pytest
from test_actors import Acks, completed, deliver, engine, start_fact  # noqa: F401 - engine is a fixture

from dagnats.domain.run_context import current, run_context
from dagnats.infra import logs
from dagnats.infra.engine.bridge import LoopBridge
from dagnats.infra.logs import JsonFormatter, RunContextFilter, log_format, setup_log_export
from dagnats.infra.worker import TaskContext, Worker

from worker_support import Inbox, engine_js, publish_task, running

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TP = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def record(message: str = "hello", exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("dagnats.test", logging.INFO, __file__, 1, message, (), exc_info)
    RunContextFilter().filter(rec)
    return rec


def ids(rec: logging.LogRecord) -> tuple[str, str, str]:
    return rec.run_id, rec.step_id, rec.trace_id  # type: ignore[attr-defined]


def test_the_filter_adds_the_run_context_inside_and_empty_fields_outside():
    assert ids(record()) == ("", "", "")
    with run_context("r1", "s1", TP):
        assert ids(record()) == ("r1", "s1", TRACE_ID)
    assert ids(record()) == ("", "", "") and current() == ("", "", "")


def test_a_port_call_on_the_loop_logs_with_the_calling_actors_run_context(caplog):
    """Actors reach NATS through the loop bridge: what the call logs there is about their run."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bridge = LoopBridge(loop)
    caplog.handler.addFilter(RunContextFilter())

    async def port_call() -> str:
        logging.getLogger("dagnats.ports").warning("publishing")
        return "done"

    async def failing() -> None:
        raise RuntimeError("NATS went away")

    try:
        with caplog.at_level(logging.WARNING), run_context("r1", "s1", TP):
            assert bridge.call(port_call()) == "done"
            bridge.spawn(failing())
            bridge.call(asyncio.sleep(0))  # the spawned call has run
        bridge.call(port_call())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    lines = [(r.getMessage(), ids(r)) for r in caplog.records]
    assert lines == [
        ("publishing", ("r1", "s1", TRACE_ID)),
        ("background call failed: NATS went away", ("r1", "s1", TRACE_ID)),
        ("publishing", ("", "", "")),
    ]


def test_a_malformed_traceparent_leaves_the_trace_id_empty():
    with run_context("r1", trace_parent="not-a-traceparent"):
        assert ids(record()) == ("r1", "", "")


def test_the_text_format_shows_the_context_only_when_set():
    text = logging.Formatter(logs.TEXT_FORMAT)
    assert text.format(record()).endswith("dagnats.test: hello")
    with run_context("r1", "s1", TP):
        assert text.format(record()).endswith(f"dagnats.test: hello run=r1 step=s1 trace={TRACE_ID}")


def test_the_json_format_is_one_object_carrying_the_context_and_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        exc = sys.exc_info()
    with run_context("r1", "s1", TP):
        line = JsonFormatter().format(record("hello %s", exc))
    assert "\n" not in line
    parsed = json.loads(line)
    assert {k: parsed[k] for k in ("level", "logger", "run_id", "step_id", "trace_id")} == {
        "level": "INFO",
        "logger": "dagnats.test",
        "run_id": "r1",
        "step_id": "s1",
        "trace_id": TRACE_ID,
    }
    assert parsed["message"] == "hello %s" and "ValueError: boom" in parsed["exc_info"] and parsed["time"]


def test_the_log_format_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("DAGNATS_LOG_FORMAT", raising=False)
    assert log_format(None) == "text"
    monkeypatch.setenv("DAGNATS_LOG_FORMAT", "JSON")
    assert log_format(None) == "json"
    assert log_format("text") == "text"


def test_log_export_is_installed_only_when_the_environment_asks(monkeypatch):
    for name in ("OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert setup_log_export("dagnats-test") is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    assert setup_log_export("dagnats-test") is None
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    handler = setup_log_export("dagnats-test")
    try:
        from opentelemetry.sdk._logs import LoggingHandler

        assert isinstance(handler, LoggingHandler) and handler in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(handler)
        handler._logger_provider.shutdown()  # type: ignore[union-attr]


@pytest.fixture
def captured(caplog):
    caplog.handler.addFilter(RunContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def test_a_run_actors_lines_carry_the_run_step_and_trace(engine, captured):  # noqa: F811
    ports, clock, timers, start = engine
    directory = start()
    acks = Acks()
    deliver(directory, acks, msgspec.structs.replace(start_fact("r1"), trace_parent=TP))
    acks.wait_for(1)

    def refuse(run_id: str) -> None:
        raise RuntimeError("injected: the store refused this append")

    ports.history.before_append = refuse
    deliver(directory, acks, completed("r1", "a", "A"))
    acks.wait_for(2)
    crash = next(r for r in captured.records if "actor crashed" in r.getMessage())
    assert ids(crash) == ("r1", "a", TRACE_ID)


def test_a_worker_handlers_lines_carry_the_run_step_and_trace(nats_url, run, captured):
    w = Worker(nats_url)

    @w.task("chatty")
    def chatty(ctx: TaskContext) -> str:
        logging.getLogger("app").info("working on it")
        return "ok"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "chatty", "r1", step_id="s7", traceparent=TP)
            await inbox.result()
        await nc.close()

    run(body())
    line = next(r for r in captured.records if r.getMessage() == "working on it")
    assert ids(line) == ("r1", "s7", TRACE_ID)


def test_serve_and_worker_take_a_log_format():
    from dagnats.infra.cli import build_parser

    assert build_parser().parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert build_parser().parse_args(["worker", "app.py", "--log-format", "text"]).log_format == "text"
