"""Bad input through the real CLI: one clear `error:` line, exit 1, no traceback, nothing stored.

The module's engine is `dagnats serve --external` on a nats-server the test
owns, with max_payload lowered to 64 KiB: a single command-line argument
cannot exceed 128 KiB on Linux, so the payload limit is reached that way.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from dagnats.domain.errors import DefinitionDecodeError, WorkflowInvalid
from dagnats.infra.client import Client
from dagnats.infra.engine.server import NatsServer, free_port

from e2e_support import CLI, EXAMPLES, Cli, Result, Serve, base_env

pytestmark = pytest.mark.e2e

MAX_PAYLOAD = 64 * 1024
ID_RULE = "must match ^[A-Za-z0-9_-]{1,64}$"


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("bad-input-nats"), max_payload=MAX_PAYLOAD)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="module")
def cli(nats):
    serve = Serve(nats.url, external=True)
    try:
        serve.start()
        cli = Cli(nats.url)
        cli.register(EXAMPLES / "hello-pipeline" / "pipeline.json")
        yield cli
    finally:
        serve.stop()


def assert_one_error_line(result: Result, *fragments: str) -> str:
    """Exit 1, nothing on stdout, exactly one `error: ...` line on stderr containing `fragments`."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_nothing_stored(cli: Cli) -> None:
    """Only the module's hello-pipeline is registered, and no run has left a trace anywhere."""
    assert [d["name"] for d in cli.workflows()] == ["hello-pipeline"]
    assert cli("run", "list", json=True) == []
    streams = cli("status", json=True)["jetstream"]["streams"]
    assert (streams["RUN_INBOX"]["messages"], streams["WORKFLOW_HISTORY"]["messages"]) == (0, 0), streams


def register_text(cli: Cli, tmp_path: Path, text: str, *extra: str) -> Result:
    path = tmp_path / "definition.json"
    path.write_text(text)
    return cli("workflow", "register", str(path), *extra, check=False)


def steps(*items: dict) -> list[dict]:
    return list(items)


NESTED_65: object = "x"
for _ in range(65):
    NESTED_65 = [NESTED_65]

BAD_DEFINITIONS = {
    "invalid-json": ('{"name": "broken", "steps": [', ["invalid JSON"]),
    "cycle": (
        {
            "name": "cyclic",
            "steps": steps(
                {"id": "a", "task": "t", "depends_on": ["b"]}, {"id": "b", "task": "t", "depends_on": ["a"]}
            ),
        },
        ["invalid workflow 'cyclic'", "cycle", '"a"', '"b"'],
    ),
    "unknown-dependency": (
        {"name": "dangling", "steps": steps({"id": "a", "task": "t", "depends_on": ["ghost"]})},
        ['step "a"', "depends_on", 'unknown step "ghost"'],
    ),
    "unknown-top-level-field": (
        {"name": "extra", "colour": "red", "steps": steps({"id": "a", "task": "t"})},
        ["unknown field `colour`"],
    ),
    "unknown-step-field": (
        {"name": "extra", "steps": steps({"id": "a", "task": "t", "retires": 3})},
        ["unknown field `retires`", "$.steps[0]"],
    ),
    "unknown-retry-field": (
        {"name": "extra", "steps": steps({"id": "a", "task": "t", "retry": {"max_attempts": 2, "backoff": "1s"}})},
        ["unknown field `backoff`", "$.steps[0].retry"],
    ),
    "duplicate-step-id": (
        {"name": "twice", "steps": steps({"id": "a", "task": "t"}, {"id": "a", "task": "t"})},
        ['duplicate step id "a"'],
    ),
    "bad-duration": (
        {"name": "slow", "steps": steps({"id": "a", "task": "t", "timeout": "3x"})},
        ["`timeout`", "invalid duration '3x'"],
    ),
    "input-nested-5000-deep": (
        '{"name": "deep", "steps": [{"id": "a", "task": "t", "input": %s}]}' % ("[" * 5000 + "]" * 5000),
        ["$.steps[0].input[0]", "nest at most 64 levels"],
    ),
    "duplicate-key": (
        '{"name": "dup", "steps": [{"id": "a", "task": "t"}, {"id": "b", "task": "t", "task": "u"}]}',
        ['duplicate key "task" at $.steps[1]'],
    ),
    "input-nested-65-deep": (
        {"name": "deep", "steps": steps({"id": "a", "task": "t", "input": NESTED_65})},
        ['step "a": input: nested deeper than 64 levels'],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DEFINITIONS))
def test_a_bad_definition_is_refused_with_one_line_naming_the_problem(cli, tmp_path, case):
    doc, fragments = BAD_DEFINITIONS[case]
    text = doc if isinstance(doc, str) else json.dumps(doc)
    assert_one_error_line(register_text(cli, tmp_path, text), *fragments)
    as_json = register_text(cli, tmp_path, text, "--json")
    assert as_json.returncode == 1 and as_json.stdout == ""
    error = json.loads(as_json.stderr)
    assert list(error) == ["error"] and all(f in error["error"] for f in fragments), error
    assert_nothing_stored(cli)


@pytest.mark.parametrize("where", ["workflow name", "step id", "task", "capability"])
def test_names_with_dots_wildcards_or_spaces_are_refused(cli, tmp_path, where):
    for bad in ("a.b", "a*", "a>", "a b"):
        doc = {
            "workflow name": {"name": bad, "steps": [{"id": "s", "task": "t"}]},
            "step id": {"name": "fine", "steps": [{"id": bad, "task": "t"}]},
            "task": {"name": "fine", "steps": [{"id": "s", "task": bad}]},
            "capability": {"name": "fine", "steps": [{"id": "s", "task": "t", "required_capabilities": ["ok", bad]}]},
        }[where]
        line = assert_one_error_line(register_text(cli, tmp_path, json.dumps(doc)), f'"{bad}"', ID_RULE)
        field = {
            "workflow name": "name:",
            "step id": "id:",
            "task": "task:",
            "capability": 'step "s": required_capabilities[1]:',
        }[where]
        assert field in line, line
    assert_nothing_stored(cli)


@pytest.mark.parametrize("bad", ["a.b", "gpu*", "two words"])
def test_a_worker_offering_a_capability_that_is_not_an_identifier_does_not_start(cli, tmp_path, bad):
    path = tmp_path / "bad_worker.py"
    path.write_text(
        "from dagnats.infra.worker import Worker\n"
        f"w = Worker(capabilities={{'cuda', {bad!r}}})\n"
        "@w.task('t')\n"
        "def t(ctx):\n"
        "    return 1\n"
    )
    result = cli("worker", str(path), check=False, timeout=30)
    assert_one_error_line(result, f"invalid capability {bad!r}", ID_RULE)


def test_starting_an_unknown_workflow_is_refused(cli):
    assert_one_error_line(
        cli("run", "start", "no-such-workflow", '"x"', check=False), "workflow 'no-such-workflow' not found"
    )
    assert_one_error_line(cli("run", "start", "a.b", '"x"', check=False), "invalid workflow name 'a.b'", ID_RULE)
    assert_nothing_stored(cli)


def test_input_that_is_not_json_is_refused_with_a_hint(cli):
    line = assert_one_error_line(
        cli("run", "start", "hello-pipeline", "World", check=False), "invalid input: not valid JSON"
    )
    assert '"World"' in line  # the hint shows how to quote a string
    assert_nothing_stored(cli)


NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", '{"deep": [1, -1e999]}']


def test_nan_and_infinity_are_refused_as_run_input_signal_data_and_event_data(cli):
    run_id = "0123456789abcdef0123456789abcdef"
    for value in NOT_JSON_NUMBERS:  # "--": a value starting with "-" is not an option
        for command, what in (
            (("run", "start", "hello-pipeline"), "run input"),
            (("run", "signal", run_id, "go"), "signal data"),
            (("event", "publish", "go"), "event data"),
        ):
            assert_one_error_line(
                cli(*command, "--", value, check=False), f"invalid input: {what}:", "JSON has no NaN or Infinity"
            )
    assert_nothing_stored(cli)
    assert cli("status", json=True)["jetstream"]["streams"]["EVENTS"]["messages"] == 0


def test_run_input_nested_thousands_of_levels_deep_is_refused_in_one_line(cli):
    deep = "[" * 5000 + "]" * 5000
    assert_one_error_line(
        cli("run", "start", "hello-pipeline", deep, check=False),
        "invalid input: run input: nested deeper than 64 levels",
    )
    assert_nothing_stored(cli)


def test_nan_input_is_refused_before_connecting_to_nats():
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens: only a check before connecting answers
    assert_one_error_line(
        Cli(url)("run", "start", "wf", "NaN", check=False), "invalid input: run input:", "JSON has no NaN or Infinity"
    )


@pytest.mark.parametrize("command", ["status", "events", "output", "cancel"])
def test_an_unknown_run_id_is_reported_as_not_found(cli, command):
    run_id = "0123456789abcdef0123456789abcdef"
    assert_one_error_line(cli("run", command, run_id, check=False), f"run '{run_id}' not found")
    error = json.loads(cli("run", command, run_id, "--json", check=False).stderr)
    assert error == {"error": f"run '{run_id}' not found"}


@pytest.mark.parametrize("run_id", ["a.b", "*", ">"])
def test_hostile_run_ids_are_refused_before_they_reach_a_subject(cli, run_id):
    for command in ("status", "events", "output", "cancel"):
        assert_one_error_line(cli("run", command, run_id, check=False), f"invalid run id '{run_id}'", ID_RULE)
    assert_nothing_stored(cli)


def test_input_larger_than_the_servers_max_payload_names_the_size_and_the_limit(cli):
    too_big = json.dumps("x" * 70_000)  # the request alone exceeds max_payload
    line = assert_one_error_line(
        cli("run", "start", "hello-pipeline", too_big, check=False), f"larger than the limit of {MAX_PAYLOAD} bytes"
    )
    size = int(re.search(r"is (\d+) bytes", line).group(1))
    assert size > len(too_big) > MAX_PAYLOAD
    # Fits in a request, but not in the workflow.started fact with the definition around it.
    nearly = json.dumps("x" * 62_000)
    line = assert_one_error_line(
        cli("run", "start", "hello-pipeline", nearly, check=False),
        "run input with its definition is",
        "larger than the limit of",
    )
    size, limit = (int(n) for n in re.findall(r"(\d+) bytes", line))
    assert size > limit and limit < MAX_PAYLOAD
    assert_nothing_stored(cli)


def test_registering_a_missing_file_names_the_file(cli, tmp_path):
    missing = tmp_path / "nowhere.json"
    assert_one_error_line(
        cli("workflow", "register", str(missing), check=False), f"cannot read {missing}: No such file or directory"
    )
    error = json.loads(cli("workflow", "register", str(missing), "--json", check=False).stderr)
    assert error == {"error": f"cannot read {missing}: No such file or directory"}
    assert_nothing_stored(cli)


def test_showing_an_unknown_workflow_is_reported_as_not_found(cli):
    assert_one_error_line(
        cli("workflow", "show", "no-such-workflow", check=False), "workflow 'no-such-workflow' not found"
    )


def test_commands_without_an_engine_say_so_in_one_line(nats_server):
    # NATS is up, but no `dagnats serve` answers on it.
    result = Cli(nats_server.url)("run", "status", "abc", check=False, timeout=60)
    assert_one_error_line(result, "no dagnats engine is answering", nats_server.url, "dagnats serve")


def test_commands_without_nats_say_so_in_one_line():
    url = f"nats://127.0.0.1:{free_port()}"
    result = Cli(url)("workflow", "list", check=False, timeout=60)
    assert_one_error_line(result, "cannot connect to NATS", url)


def test_serve_on_a_port_already_in_use_exits_with_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*CLI, "serve", "--nats-url", f"nats://127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")]
        done = subprocess.run(
            argv,
            check=False,
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    assert_one_error_line(Result(done.returncode, done.stdout, done.stderr), f"port 127.0.0.1:{port} is already in use")


def test_serve_external_without_nats_exits_with_one_clear_line():
    url = f"nats://127.0.0.1:{free_port()}"
    argv = [*CLI, "serve", "--external", "--nats-url", url]
    try:  # run() SIGKILLs the process it started when the timeout expires
        done = subprocess.run(
            argv,
            check=False,
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr or b""  # bytes even with text=True (CPython's TimeoutExpired)
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        pytest.fail(f"serve --external was still running after 10 s; stderr began:\n{stderr[:1500]}")
    assert_one_error_line(Result(done.returncode, done.stdout, done.stderr), "cannot connect to NATS", url)


# ---- flow control: limits, concurrency, priority, capabilities --------------------------------


def limited(**fields) -> dict:
    """A one-step workflow `limited` whose step carries `fields`."""
    return {"name": "limited", "steps": [{"id": "s", "task": "t", **fields}]}


def queued(**fields) -> dict:
    """A one-step workflow `queued` with workflow-level `fields`."""
    return {"name": "queued", "steps": [{"id": "s", "task": "t"}], **fields}


BAD_FLOW_CONTROL = {
    "rate-limit-zero": (
        limited(rate_limit={"limit": 0, "period": "1s"}),
        ['step "s": rate_limit.limit: must be greater than 0 (got 0)'],
    ),
    "rate-limit-negative": (
        limited(rate_limit={"limit": -5, "period": "1s"}),
        ['step "s": rate_limit.limit: must be greater than 0 (got -5)'],
    ),
    "rate-limit-too-large": (
        limited(rate_limit={"limit": 1_000_000, "period": "1h"}),
        ['step "s": rate_limit.limit: 1000000 is more than the maximum of 5000 per period'],
    ),
    "rate-period-soon": (
        limited(rate_limit={"limit": 5, "period": "soon"}),
        ["`period`: invalid duration 'soon'", "$.steps[0].rate_limit"],
    ),
    "rate-period-zero": (
        limited(rate_limit={"limit": 5, "period": 0}),
        ['step "s": rate_limit.period: must be greater than 0 (got 0)'],
    ),
    "keyed-key-empty-segment": (
        limited(keyed_rate_limit={"key": "a..b", "limit": 5, "period": "1s"}),
        ['step "s": keyed_rate_limit.key: "a..b" is not a dot path'],
    ),
    "keyed-key-with-a-space": (
        limited(keyed_rate_limit={"key": "order id", "limit": 5, "period": "1s"}),
        ['step "s": keyed_rate_limit.key: "order id" is not a dot path'],
    ),
    "keyed-units-zero": (
        limited(keyed_rate_limit={"key": "user", "limit": 5, "period": "1s", "units": 0}),
        ['step "s": keyed_rate_limit.units: must be between 1 and 5 (got 0)'],
    ),
    "keyed-units-over-the-limit": (
        limited(keyed_rate_limit={"key": "user", "limit": 5, "period": "1s", "units": 6}),
        ['step "s": keyed_rate_limit.units: must be between 1 and 5 (got 6)'],
    ),
    "both-rate-limits": (
        limited(rate_limit={"limit": 5, "period": "1s"}, keyed_rate_limit={"key": "u", "limit": 5, "period": "1s"}),
        ['step "s": rate_limit: cannot be combined with keyed_rate_limit'],
    ),
    "task-concurrency-negative": (
        limited(max_task_concurrency=-1),
        ['step "s": max_task_concurrency: must be between 0 and 1000 (got -1)'],
    ),
    "limit-on-a-sleep": (
        {"name": "limited", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "1s"}, "singleton": True}]},
        ['step "nap": singleton: a "sleep" step runs in the engine, not on a worker'],
    ),
    "max-runs-negative": (
        queued(concurrency={"max_runs": -1}),
        ["concurrency.max_runs: must not be negative (got -1)"],
    ),
    "priority-rules-not-an-object": (
        queued(concurrency={"max_runs": 1}, priority={"key": "tier", "rules": ["gold", "free"]}),
        ["Expected `object`, got `array`", "$.priority.rules"],
    ),
    "priority-offset-out-of-range": (
        queued(concurrency={"max_runs": 1}, priority={"key": "tier", "rules": {"gold": 3600}}),
        ['priority.rules["gold"]: must be between -600 and 600 (got 3600)'],
    ),
    "priority-default-offset-out-of-range": (
        queued(concurrency={"max_runs": 1}, priority={"key": "tier", "rules": {"gold": 60}, "default_offset": -601}),
        ["priority.default_offset: must be between -600 and 600 (got -601)"],
    ),
    "priority-key-not-a-dot-path": (
        queued(concurrency={"max_runs": 1}, priority={"key": "customer tier", "rules": {"gold": 60}}),
        ['priority.key: "customer tier" is not a dot path'],
    ),
    "capability-with-a-dot": (
        limited(required_capabilities=["fast.disk"]),
        ['step "s": required_capabilities[0]: "fast.disk"', ID_RULE],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FLOW_CONTROL))
def test_bad_flow_control_fields_are_refused_with_one_line_and_nothing_is_stored(cli, tmp_path, case):
    doc, fragments = BAD_FLOW_CONTROL[case]
    text = json.dumps(doc)
    line = assert_one_error_line(register_text(cli, tmp_path, text), *fragments)
    assert len(line) < 400, line
    as_json = register_text(cli, tmp_path, text, "--json")
    assert as_json.returncode == 1 and as_json.stdout == ""
    assert all(f in json.loads(as_json.stderr)["error"] for f in fragments)

    async def straight_to_the_engine():  # past the CLI's own check: the engine refuses it too
        async with Client(cli.url) as client:
            with pytest.raises((WorkflowInvalid, DefinitionDecodeError)) as refused:
                await client.register(doc)
            return str(refused.value)

    assert all(f in asyncio.run(straight_to_the_engine()) for f in fragments if not f.startswith("$."))
    assert_nothing_stored(cli)


@pytest.mark.parametrize("queue", ["0", "-1", "10001", "abc", "1e3"])
def test_limits_with_a_queue_out_of_range_is_a_usage_error_in_one_line(cli, queue):
    result = cli("limits", f"--queue={queue}", check=False)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dagnats limits: error: argument --queue: must be ") and "between 1 and 10000" in last
    assert repr(queue) in last or queue in last
