"""HTTP workers end to end: `dagnats serve --http`, a Python worker and the Node.js
example worker (examples/http-worker/worker.mjs) share one workflow's steps."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

from dagnats.infra.engine.server import free_port

from e2e_support import EXAMPLES, Cli, Proc, Serve, WorkerProc, base_env

NODE = shutil.which("node")


def post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.e2e
@pytest.mark.skipif(NODE is None, reason="node is not installed (the example HTTP worker is Node.js)")
def test_a_workflow_split_between_a_python_worker_and_a_node_http_worker(tmp_path, monkeypatch):
    url, http = f"nats://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DAGNATS_BRIDGE_TOKEN", "bridge-secret")
    serve = Serve(url, data_dir=tmp_path / "data", extra=["--http", http.removeprefix("http://")])
    cli = Cli(url)
    python = WorkerProc.from_file(EXAMPLES / "http-worker" / "worker.py", url)
    node = Proc(
        "node worker",
        [NODE, str(EXAMPLES / "http-worker" / "worker.mjs")],
        base_env(url, DAGNATS_HTTP_URL=http),
        ready_line="node worker ready",
    )
    try:
        serve.start()
        assert post(f"{http}/v1/tasks/poll", {"task_types": ["x"]})[0] == 401  # the bridge wants its token
        cli.register(EXAMPLES / "http-worker" / "workflow.json")
        python.start()
        node.start()
        run_id = cli.start("polyglot", "Ada")
        status = cli.wait_status(run_id, "completed", timeout=30)
        assert status["output"] == "HELLO, ADA! (shouted by Node) -- signed in Python"
        shout = status["steps"]["shout"]
        assert shout["status"] == "completed" and shout["worker_id"].startswith("worker-")
    finally:
        node.stop()
        python.stop()
        serve.stop()


@pytest.mark.e2e
def test_bridge_refuses_unknown_and_resolved_tasks_and_absurd_polls(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGNATS_BRIDGE_TOKEN", raising=False)
    url, http = f"nats://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    serve = Serve(url, data_dir=tmp_path / "data", extra=["--http", http.removeprefix("http://")])
    cli = Cli(url)
    try:
        serve.start()
        wf = {"name": "solo", "steps": [{"id": "a", "task": "t_http"}]}
        cli.register(wf, tmp_path)
        assert post(f"{http}/v1/tasks/poll", {"task_types": ["t_http"], "timeout_ms": 86_400_000})[0] == 400
        assert post(f"{http}/v1/tasks/poll", {"task_types": ["t.>"]})[0] == 400
        code, body = post(f"{http}/v1/tasks/{'0' * 32}/resolve", {"action": "complete"})
        assert code == 404 and body["error"] == "task_not_found"
        run_id = cli.start("solo", {"n": 1})
        code, tasks = post(f"{http}/v1/tasks/poll", {"task_types": ["t_http"], "timeout_ms": 10_000})
        assert code == 200 and [t["run_id"] for t in tasks] == [run_id]
        task_id = tasks[0]["task_id"]
        assert post(f"{http}/v1/tasks/{task_id}/resolve", {"action": "explode"})[0] == 400
        assert post(f"{http}/v1/tasks/{task_id}/resolve", {"action": "fail", "failure_type": "odd"})[0] == 400
        code, done = post(
            f"{http}/v1/tasks/{task_id}/resolve", {"action": "fail", "error": "no", "failure_type": "permanent"}
        )
        assert code == 200 and done["settled"] is True
        code, again = post(f"{http}/v1/tasks/{task_id}/resolve", {"action": "complete"})
        assert code == 409 and again["error"] == "task_already_resolved"
        status = cli.wait_status(run_id, "failed", timeout=20)
        assert "no" in status["steps"]["a"]["error"]
    finally:
        serve.stop()
