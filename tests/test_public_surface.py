"""The names other people's scripts rely on (DESIGN.md, "Public surface")."""

from __future__ import annotations

import pytest

from dagnats.infra.cli import build_parser


def test_the_worker_sdk_exports_its_pinned_names():
    from dagnats.infra import worker

    assert {"Worker", "TaskContext", "Permanent", "Continue", "SignalTimeout"} <= set(worker.__all__)
    w = worker.Worker("nats://127.0.0.1:1")
    assert callable(w.task) and callable(w.run)


def test_the_builder_and_client_are_where_the_docs_say():
    from dagnats.domain.builder import StepRef, WorkflowBuilder  # noqa: F401
    from dagnats.infra.client import Client, SyncClient

    for op in (
        "register",
        "start",
        "status",
        "events",
        "output",
        "wait",
        "cancel",
        "pause",
        "resume",
        "signal",
        "inspect",
        "delete",
        "runs",
        "publish_event",
        "approve",
        "reject",
        "limits",
    ):
        assert callable(getattr(Client, op)), op
    assert SyncClient.__init__


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--help"],
        ["status", "--help"],
        ["worker", "--help"],
        ["workflow", "register", "--help"],
        ["workflow", "list", "--help"],
        ["workflow", "show", "--help"],
        ["workflow", "delete", "--help"],
        ["run", "start", "--help"],
        ["run", "status", "--help"],
        ["run", "events", "--help"],
        ["run", "list", "--help"],
        ["run", "output", "--help"],
        ["run", "cancel", "--help"],
        ["run", "signal", "--help"],
        ["run", "pause", "--help"],
        ["run", "resume", "--help"],
        ["run", "wait", "--help"],
        ["run", "inspect", "--help"],
        ["run", "trace", "--help"],
        ["run", "delete", "--help"],
        ["event", "publish", "--help"],
        ["run", "approve", "--help"],
        ["run", "reject", "--help"],
        ["limits", "--help"],
        ["drill", "--help"],
        ["cluster", "up", "--help"],
        ["cluster", "down", "--help"],
        ["cluster", "status", "--help"],
    ],
)
def test_every_pinned_cli_command_exists(argv, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_the_worker_sdk_and_the_client_load_neither_the_engine_nor_pykka():
    import subprocess
    import sys

    probe = (
        "import sys, dagnats.infra.worker, dagnats.infra.client\n"
        "engine = ('pykka', 'dagnats.actors', 'dagnats.infra.engine', 'dagnats.infra.cli')\n"
        "bad = sorted(m for m in sys.modules if m in engine or m.startswith(tuple(e + '.' for e in engine)))\n"
        "print(','.join(bad))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
