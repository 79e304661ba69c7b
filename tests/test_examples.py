"""The examples stay valid: every workflow parses and validates, every worker loads.

Fast and without a server: a workflow under examples/ that fails
``parse_and_validate`` would fail ``dagnats workflow register`` too, and a
worker file that ``load_worker`` cannot load would fail ``dagnats worker``.
"""

from __future__ import annotations

import py_compile
import re
from pathlib import Path

import pytest

from dagnats.domain.validate import parse_and_validate
from dagnats.infra.worker import Worker, load_worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORKFLOWS = sorted(EXAMPLES.rglob("*.json"))
WORKERS = sorted(EXAMPLES.rglob("*worker*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


# The step types beyond a worker's task, and the worker-side features: the example that shows each.
STEP_TYPE_EXAMPLES = {
    "sleep": "sleep",
    "approval": "approval",
    "wait-for-event": "wait_for_event",
    "sub-workflow": "sub_workflow",
    "map": "map",
    "agent-loop": "agent_loop",
    "planner": "planner",
    "http-trigger": "respond",
}
WORKER_FEATURE_EXAMPLES = {
    "agent-loop": ("Continue(", "ctx.checkpoint(", "ctx.last_checkpoint(", "ctx.metadata"),
    "dynamic-steps": ("ctx.add_step(",),
    "signals": ("ctx.wait_for_signal(",),
}


def test_the_examples_folder_has_workflows_and_workers():
    assert len(WORKFLOWS) >= 30 and len(WORKERS) >= 25


@pytest.mark.parametrize(("folder", "step_type"), sorted(STEP_TYPE_EXAMPLES.items()))
def test_each_step_type_has_a_runnable_example(folder, step_type):
    here = EXAMPLES / folder
    assert (here / "README.md").is_file() and (here / "worker.py").is_file()
    types = {step.type for path in here.glob("*.json") for step in parse_and_validate(path.read_bytes()).steps}
    assert step_type in types


@pytest.mark.parametrize(("folder", "calls"), sorted(WORKER_FEATURE_EXAMPLES.items()))
def test_each_worker_feature_has_a_runnable_example(folder, calls):
    here = EXAMPLES / folder
    assert (here / "README.md").is_file() and (here / "workflow.json").is_file()
    source = (here / "worker.py").read_text()
    assert all(call in source for call in calls)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.py")), ids=_name)
def test_every_example_python_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


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
    # HTTP workers in other languages declare `const tasks = ["name", ...]`.
    for path in folder.glob("*worker*.mjs"):
        declared = re.search(r"const tasks = \[([^\]]*)\]", path.read_text())
        handled |= set(re.findall(r'"([^"]+)"', declared.group(1))) if declared else set()
    needed = {
        step.task
        for path in folder.glob("*.json")
        for step in parse_and_validate(path.read_bytes(), str(path)).steps
        if step.task
    }
    assert needed <= handled, f"tasks without a handler in {_name(folder)}: {sorted(needed - handled)}"
