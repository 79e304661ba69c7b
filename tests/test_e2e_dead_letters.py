"""Drill D4, poison message: a worker process that dies on a task, with bounded deliveries.

The engine (`dagnats serve --external`) moves the task to the dead letters once
it has been delivered ``max_deliveries`` times, the step fails and the run with
it, the work queue keeps nothing of it, and runs of another workflow complete
meanwhile. Once the handler is fixed, `dagnats dlq replay` has the run take the
step up again and it completes.
"""

from __future__ import annotations

import pytest

from e2e_support import Cli, Serve, WorkerProc, wait_for

pytestmark = pytest.mark.e2e

POISON = """
FIXED = os.path.join(os.path.dirname(JOURNAL), "fixed")


@w.task("d4-poison")
def poison(ctx: TaskContext, data: str) -> str:
    journal(ctx, "begin")
    if not os.path.exists(FIXED):
        os._exit(3)  # the bug: the process dies on this input, every time
    return f"handled {data}"
"""

STEADY = """
@w.task("d4-ok")
def ok(ctx: TaskContext, n: int) -> int:
    return n * 2
"""

DELIVERIES = 3


@pytest.fixture
def engine(nats):
    serve = Serve(nats.url, external=True)
    try:
        yield serve.start()
    finally:
        serve.stop()


def test_d4_poison_task_is_dead_lettered_and_replayed_once_fixed(nats, engine, tmp_path):
    cli = Cli(nats.url)
    cli.register({"name": "d4-poisoned", "steps": [{"id": "eat", "task": "d4-poison"}]}, tmp_path)
    cli.register({"name": "d4-steady", "steps": [{"id": "double", "task": "d4-ok"}]}, tmp_path)
    worker_args = f"ack_wait=1, max_deliveries={DELIVERIES}, drain_timeout=1"
    poisoned = WorkerProc(tmp_path, nats.url, POISON, name="poisoned", worker_args=worker_args)
    steady = WorkerProc(tmp_path, nats.url, STEADY, name="steady")
    try:
        steady.start()
        run_id = cli.start("d4-poisoned", "pill")
        others = [cli.start("d4-steady", n) for n in range(5)]

        def failed() -> bool:
            if cli.status(run_id)["status"] == "failed":
                return True
            if not any(p.running for p in poisoned.procs):
                poisoned.start()  # the last one died on the task: the next worker takes it
            return False

        wait_for(failed, 60, "the poisoned run to fail")
        final = cli.status(run_id)
        assert "max_deliveries" in final["steps"]["eat"]["error"]
        assert len(poisoned.journal.rows()) == DELIVERIES, "each delivery ran the handler once"
        for other in others:
            assert cli.wait_status(other, "completed")["output"] == other_output(cli, other)

        entries = cli("dlq", "list", "--run", run_id, json=True)
        assert [(e["step_id"], e["reason"], e["deliveries"]) for e in entries] == [("eat", "max_deliveries", 3)]
        table = cli("dlq", "list", "--run", run_id).stdout
        assert table.split()[:7] == ["SEQ", "TASK", "RUN", "STEP", "REASON", "ATTEMPTS", "TIME"]
        assert "max_deliveries" in table
        queued = cli("status", json=True)["jetstream"]["streams"]["TASK_QUEUES"]["messages"]
        assert queued == 0, "nothing stuck in the work queue"
        seq = str(entries[0]["seq"])
        shown = cli("dlq", "show", seq).stdout
        assert "Reason:     max_deliveries" in shown and '"input": "pill"' in shown

        (tmp_path / "fixed").touch()  # the handler is fixed and deployed
        for proc in poisoned.procs:
            proc.stop()
        poisoned.start()
        replayed = cli("dlq", "replay", seq)
        assert replayed.stdout.strip() == f"Replayed dead letter {seq}: run {run_id} runs step eat again (attempt 2)"
        done = cli.wait_status(run_id, "completed", timeout=30)
        assert done["output"] == "handled pill"

        again = cli("dlq", "replay", seq, json=True, check=False, raw=True)
        assert again.returncode == 1 and "no dead letter" in again.stderr  # dropped once the replay completed
        hostile = cli("dlq", "list", "--run", "a.>", check=False)
        assert hostile.returncode == 1 and "invalid run id" in hostile.stderr
        unknown = cli("dlq", "discard", "999999", check=False)
        assert unknown.returncode == 1 and unknown.stderr.startswith("error: no dead letter 999999")
    finally:
        poisoned.stop()
        steady.stop()


def other_output(cli: Cli, run_id: str) -> int:
    return cli.status(run_id)["input"] * 2
