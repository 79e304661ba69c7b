"""The examples stay valid: every workflow parses and validates, every worker loads.

Fast and without a server: a workflow under examples/ that fails
``parse_and_validate`` would fail ``dagnats workflow register`` too, and a
worker file that ``load_worker`` cannot load would fail ``dagnats worker``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dagnats.domain.validate import parse_and_validate
from dagnats.infra.worker import Worker, load_worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORKFLOWS = sorted(EXAMPLES.rglob("*.json"))
WORKERS = sorted(EXAMPLES.rglob("*worker*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_the_examples_folder_has_workflows_and_workers():
    assert len(WORKFLOWS) >= 15 and len(WORKERS) >= 15


@pytest.mark.parametrize("path", WORKFLOWS, ids=_name)
def test_example_workflow_parses_and_validates(path):
    wf = parse_and_validate(path.read_bytes(), str(path))
    assert wf.steps


@pytest.mark.parametrize("path", WORKERS, ids=_name)
def test_example_worker_file_defines_a_worker_with_tasks(path):
    worker = load_worker(str(path))
    assert isinstance(worker, Worker)
    assert worker.tasks


@pytest.mark.parametrize("folder", sorted({p.parent for p in WORKFLOWS}), ids=_name)
def test_every_task_of_an_example_has_a_handler_in_its_folder(folder):
    handled = {task for path in folder.glob("*worker*.py") for task in load_worker(str(path)).tasks}
    needed = {
        step.task
        for path in folder.glob("*.json")
        for step in parse_and_validate(path.read_bytes(), str(path)).steps
        if step.task
    }
    assert needed <= handled, f"tasks without a handler in {_name(folder)}: {sorted(needed - handled)}"
