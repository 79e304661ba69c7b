"""docs/tutorial.md, command by command, through the real CLI and an embedded `dagnats serve`."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest

from dagnats.infra.engine.server import free_port

from e2e_support import EXAMPLES, Cli, Result, Serve, WorkerProc, wait_for

pytestmark = pytest.mark.e2e

PIPELINE = EXAMPLES / "hello-pipeline" / "pipeline.json"
PIPELINE_V11 = EXAMPLES / "hello-pipeline" / "pipeline-v1.1.json"
RUN_ID = r"[0-9a-f]{32}"


@dataclass
class Tutorial:
    serve: Serve
    cli: Cli
    registered: Result
    watched: Result
    run_id: str


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """Sections 1-4: serve, register, the example worker, one watched run."""
    tmp = tmp_path_factory.mktemp("tutorial")
    url = f"nats://127.0.0.1:{free_port()}"
    serve = Serve(url, data_dir=tmp / "data")
    worker = WorkerProc.from_file(EXAMPLES / "hello-pipeline" / "worker.py", url)
    try:
        serve.start()
        cli = Cli(url)
        registered = cli("workflow", "register", "examples/hello-pipeline/pipeline.json")
        worker.start()
        watched = cli("run", "start", "hello-pipeline", '"World"', "--watch", check=False)
        match = re.match(rf"Run ({RUN_ID}) started\n", watched.stdout)
        assert match, f"unexpected --watch output: {watched}\n{serve.output}\n{worker.output}"
        yield Tutorial(serve, cli, registered, watched, match.group(1))
    finally:
        worker.stop()
        serve.stop()


def test_register_prints_the_workflow_created_with_its_step_count(tutorial):
    assert tutorial.registered.returncode == 0
    assert tutorial.registered.stdout == "Workflow created: hello-pipeline (3 steps)\n"


def test_watched_run_prints_each_step_then_completed_and_exits_zero(tutorial):
    run_id = tutorial.run_id
    assert tutorial.watched.stdout.splitlines() == [
        f"Run {run_id} started",
        "step.greet: completed",
        "step.uppercase: completed",
        "step.reverse: completed",
        f"Run {run_id} completed",
    ]
    assert tutorial.watched.returncode == 0
    assert "Traceback" not in tutorial.watched.stderr


def test_watch_exits_zero_every_time_it_prints_completed(tutorial):
    # The exit code once came from a status read that could lag the watched history.
    for _ in range(8):
        watched = tutorial.cli("run", "start", "hello-pipeline", '"World"', "--watch", check=False)
        assert (watched.returncode, watched.stdout.splitlines()[-1].split()[-1]) == (0, "completed"), watched


def test_run_status_shows_each_step_completed_with_its_output(tutorial):
    text = tutorial.cli("run", "status", tutorial.run_id).stdout
    assert f"Run:      {tutorial.run_id}\n" in text
    assert "Workflow: hello-pipeline\n" in text
    assert "Status:   completed\n" in text
    for step, output in (("greet", "Hello, World!"), ("uppercase", "HELLO, WORLD!"), ("reverse", "!DLROW ,OLLEH")):
        line = rf'^  {step}:\s+completed\s+attempts: 1\s+"{re.escape(output)}"$'
        assert re.search(line, text, re.MULTILINE), text


def test_run_status_json_has_the_documented_fields(tutorial):
    run = tutorial.cli.status(tutorial.run_id)
    assert run["run_id"] == tutorial.run_id
    assert run["workflow"] == "hello-pipeline"
    assert run["status"] == "completed"
    assert run["input"] == "World"
    assert run["output"] == "!DLROW ,OLLEH"
    assert run["created_at"] and run["completed_at"] and run["created_at"] <= run["completed_at"]
    assert {step: {k: s[k] for k in ("status", "attempts", "output", "error")} for step, s in run["steps"].items()} == {
        "greet": {"status": "completed", "attempts": 1, "output": "Hello, World!", "error": None},
        "uppercase": {"status": "completed", "attempts": 1, "output": "HELLO, WORLD!", "error": None},
        "reverse": {"status": "completed", "attempts": 1, "output": "!DLROW ,OLLEH", "error": None},
    }


def test_run_output_prints_the_last_steps_output_as_json(tutorial):
    assert tutorial.cli("run", "output", tutorial.run_id, "--json").stdout == '"!DLROW ,OLLEH"\n'
    assert tutorial.cli("run", "output", tutorial.run_id).stdout == '"!DLROW ,OLLEH"\n'


def test_run_events_lists_the_history_from_started_to_completed(tutorial):
    events = tutorial.cli.events(tutorial.run_id)
    expected = [("workflow.started", None)]
    for step in ("greet", "uppercase", "reverse"):
        # The tutorial's handlers are quick: their results carry the start time.
        expected += [("step.queued", step), ("step.completed", step)]
    expected.append(("workflow.completed", None))
    assert [(e["type"], e["step_id"]) for e in events] == expected
    assert all(e["started_at"] for e in events if e["type"] == "step.completed")
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    text = tutorial.cli("run", "events", tutorial.run_id).stdout.splitlines()
    assert text[0].split() == ["TIMESTAMP", "TYPE", "STEP", "ATTEMPT", "DATA"]
    assert [line.split()[1] for line in text[1:]] == [t for t, _ in expected]


def test_run_list_contains_the_run(tutorial):
    runs = tutorial.cli.runs()
    mine = [r for r in runs if r["run_id"] == tutorial.run_id]
    assert mine and mine[0]["workflow"] == "hello-pipeline" and mine[0]["status"] == "completed"
    assert (mine[0]["steps_done"], mine[0]["steps_total"]) == (3, 3)
    text = tutorial.cli("run", "list").stdout
    assert re.search(rf"^{tutorial.run_id}\s+hello-pipeline\s+completed\s", text, re.MULTILINE), text


def test_run_start_without_watch_prints_the_id_and_returns(tutorial):
    started = tutorial.cli("run", "start", "hello-pipeline", '"World"', "--json")
    body = json.loads(started.stdout)
    assert list(body) == ["run_id"] and re.fullmatch(RUN_ID, body["run_id"])
    plain = tutorial.cli("run", "start", "hello-pipeline", '"Moon"')
    assert re.fullmatch(rf"Run {RUN_ID} started\n", plain.stdout), plain
    for run_id in (body["run_id"], plain.stdout.split()[1]):
        tutorial.cli.wait_status(run_id, "completed")
    assert tutorial.cli.status(plain.stdout.split()[1])["output"] == "!NOOM ,OLLEH"


def test_version_1_1_registers_as_an_update_and_runs_again(tutorial):
    cli = tutorial.cli
    updated = cli("workflow", "register", "examples/hello-pipeline/pipeline-v1.1.json")
    assert updated.stdout == "Workflow updated: hello-pipeline (3 steps)\n"
    watched = cli("run", "start", "hello-pipeline", '"World"', "--watch", check=False)
    assert watched.returncode == 0, watched
    lines = watched.stdout.splitlines()
    assert lines[1:4] == ["step.greet: completed", "step.uppercase: completed", "step.reverse: completed"]
    assert re.fullmatch(rf"Run {RUN_ID} completed", lines[-1])

    shown = cli("workflow", "show", "hello-pipeline", json=True)
    assert shown["version"] == "1.1"
    greet = shown["steps"][0]
    assert greet["id"] == "greet" and greet["retry"]["max_attempts"] == 3
    assert greet["retry"]["strategy"] == "exponential" and greet["timeout"] in ("30s", 30_000_000_000)
    assert shown["default_retry"]["max_attempts"] == 2
    listed = cli.workflows()
    assert [(d["name"], d.get("version")) for d in listed] == [("hello-pipeline", "1.1")]
    text = cli("workflow", "show", "hello-pipeline").stdout
    assert "Version: 1.1" in text and re.search(r"^greet\s+greet\s+normal\s+-\s+30s$", text, re.MULTILINE), text


def test_status_json_reports_nats_and_the_streams(tutorial):
    st = tutorial.cli("status", json=True)
    assert st["nats"]["connected"] is True
    assert st["nats"]["url"] == tutorial.serve.url
    assert st["jetstream"]["streams"]["WORKFLOW_HISTORY"]["messages"] > 0
    assert isinstance(st["engine"]["live_runs"], int)
    assert tutorial.cli("status").stdout.startswith("NATS:       connected")


def test_serve_stops_cleanly_and_promptly_on_sigterm(tmp_path):
    serve = Serve(f"nats://127.0.0.1:{free_port()}", data_dir=tmp_path / "data")
    try:
        serve.start()
        nats_pids = [pid for pid in serve.orphans()]
        assert nats_pids, f"no nats-server child found:\n{serve.output}"
        time.sleep(3)  # a serve that has idled a little (its fetch loops have polled)
        code = serve.proc.stop(grace=10.0)
        assert code == 0, f"serve exit code {code} (negative: killed after 10 s)\n{serve.output}"
        assert "dagnats: stopped" in serve.output
        wait_for(lambda: not serve.orphans(), 5, "the embedded nats-server to exit with serve")
    finally:
        serve.stop()
