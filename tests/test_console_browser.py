"""The web console in a real browser: Debian's chromium driven by Playwright against a
real `dagnats serve --http` and a worker. Loads every page, starts a run from the page
and watches it complete, approves an approval step, replays a dead letter.

Set DAGNATS_CONSOLE_SCREENSHOTS=1 to (re)write the screenshots in docs/console/.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dagnats.infra.engine.server import free_port

from e2e_support import ROOT, Cli, Serve, WorkerProc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    sync_playwright = None

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[dev]')"),
]

SHOTS = ROOT / "docs" / "console"
DEMO = {
    "name": "console-demo",
    "steps": [{"id": "fetch", "task": "cd_work"}, {"id": "store", "task": "cd_work", "depends_on": ["fetch"]}],
}
GATE = {
    "name": "console-gate",
    "steps": [
        {"id": "ok", "type": "approval", "config": {"subject": "ops", "timeout": 600_000_000_000}},
        {"id": "ship", "task": "cd_work", "depends_on": ["ok"]},
    ],
}
FLAKY = {"name": "console-flaky", "steps": [{"id": "try", "task": "cd_flaky"}]}
HANDLERS = """
w = Worker()


@w.task("cd_work")
def work(ctx, data):
    return {"seen": data}


@w.task("cd_flaky")
def flaky(ctx, data):
    marker = os.path.join(os.path.dirname(JOURNAL), "flaky-failed")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise Permanent("fails the first time")
    return "fixed"
"""


@pytest.fixture
def console(tmp_path):
    url, port = f"nats://127.0.0.1:{free_port()}", free_port()
    serve = Serve(url, data_dir=tmp_path / "data", extra=["--http", f"127.0.0.1:{port}"])
    worker = WorkerProc(tmp_path, url, HANDLERS)
    cli = Cli(url)
    serve.start()
    try:
        for wf in (DEMO, GATE, FLAKY):
            cli.register(wf, tmp_path)
        worker.start()
        yield f"http://127.0.0.1:{port}", cli
    finally:
        worker.stop()
        serve.stop()


def shot(page, name: str) -> None:
    if os.environ.get("DAGNATS_CONSOLE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_text(page, selector: str, text: str, timeout: float = 30.0) -> None:
    """Reload until ``selector`` shows ``text`` (live pages refresh themselves too)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in (page.text_content(selector) or ""):
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}: {page.text_content(selector)!r}"
        page.wait_for_timeout(300)
        page.reload()


def test_console_pages_run_approve_and_replay_in_a_browser(console):
    base, cli = console
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        for path in (
            "/console/",
            "/console/workflows",
            "/console/runs",
            "/console/dead-letters",
            "/console/limits",
            "/console/triggers",
            "/docs",
        ):
            response = page.goto(base + path)
            assert response is not None and response.status == 200, path
        # Start a run from the workflow's page and watch it complete.
        page.goto(base + "/console/workflows")
        page.click("text=console-demo")
        shot(page, "workflow")
        page.fill("#input", '{"order": 7}')
        page.click("text=Start a run")
        assert "/console/runs/" in page.url
        wait_text(page, "#run-status", "completed")
        assert '"order": 7' in page.text_content("#output")
        assert page.get_attribute("g[data-step=store]", "data-status") == "completed"
        shot(page, "run")
        # Approve an approval step from its run page.
        gate_id = cli.start("console-gate")
        page.goto(f"{base}/console/runs/{gate_id}")
        wait_text(page, "#actions", "Approve ok")
        page.click("text=Approve ok")
        wait_text(page, "#run-status", "completed")
        # A step that failed for good: replay its dead letter, and the run completes.
        flaky_id = cli.start("console-flaky")
        cli.wait_status(flaky_id, "failed")
        page.goto(base + "/console/dead-letters")
        wait_text(page, "body", flaky_id)
        shot(page, "dead-letters")
        page.click("text=Replay")
        page.goto(f"{base}/console/runs/{flaky_id}")
        wait_text(page, "#run-status", "completed")
        page.goto(base + "/console/runs")
        shot(page, "runs")
        page.goto(base + "/console/")
        shot(page, "dashboard")
        browser.close()


def test_a_console_form_without_its_csrf_token_is_refused(console):
    base, _ = console
    request = urllib.request.Request(f"{base}/console/workflows/console-demo/start", b"input=null", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def test_the_screenshots_in_the_docs_exist():
    assert all((SHOTS / f"{name}.png").is_file() for name in ("dashboard", "runs", "run", "workflow", "dead-letters"))
    assert Path(ROOT / "docs" / "console.md").is_file()
