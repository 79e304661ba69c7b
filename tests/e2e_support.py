"""End-to-end support: the real `dagnats` CLI, `dagnats serve` and worker processes.

Nothing here talks to NATS in-process: every action is a subprocess of
``python -m dagnats.infra.cli``, exactly as a user types it. The pieces:

    Serve        `dagnats serve` (embedded nats-server, or --external) in its
                 own session; readiness is the "engine ready" line on stderr,
                 read by a thread that keeps draining it.
    Cli          `cli("run", "status", run_id, json=True)` runs one command
                 against one NATS URL and returns its result or parsed JSON.
    WorkerProc   writes a worker file from a template into tmp_path and runs
                 `dagnats worker FILE.py`; its handlers can `journal(ctx, ...)`
                 one fsynced JSON line per execution phase to a file outside
                 NATS, so tests count real executions.

Every process is stopped by the fixture that started it: SIGTERM, a grace
period, then SIGKILL of the PID we started (and, for an embedded serve, of
the nats-server child it spawned, found through /proc and stopped by PID).

Only processes started here are ever signalled.
"""

from __future__ import annotations

import collections
import contextlib
import json as _json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from dagnats.infra.engine.server import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "dagnats.infra.cli"]

# SIGTERM grace before SIGKILL at teardown: `dagnats serve` and workers stop
# within a second or two (test_e2e_tutorial checks serve's own shutdown);
# a worker blocked in a sync handler is killed after this.
STOP_GRACE = 5.0


def base_env(nats_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("DAGNATS_NATS_URL", None)
    if nats_url:
        env["DAGNATS_NATS_URL"] = nats_url
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- processes ---------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(p) for p in text.split())
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_foreign_pid(pid: int, cmdline: str, grace: float = 5.0) -> None:
    """Stop a process we caused but do not parent (an orphaned nats-server), by PID.

    Signals it only while its command line is still the one recorded, so a
    recycled PID is never touched.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _alive(pid) or _cmdline(pid) != cmdline:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class Proc:
    """One subprocess whose stdout and stderr are drained by threads into memory."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path = ROOT, ready_line: str | None = None
    ) -> None:
        self.name, self.argv, self.env, self.cwd = name, list(argv), env, cwd
        self.ready_line = ready_line
        self.lines: collections.deque[str] = collections.deque(maxlen=2000)
        self.ready = threading.Event()
        self.popen: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        self.returncode: int | None = None

    def start(self, timeout: float = 30.0) -> Proc:
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for stream in (self.popen.stdout, self.popen.stderr):
            pump = threading.Thread(
                target=self._pump, args=(stream,), daemon=True, name=f"e2e-{self.name}-{self.popen.pid}"
            )
            pump.start()
            self._pumps.append(pump)
        if self.ready_line is not None:
            self.wait_ready(timeout)
        return self

    def _pump(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if self.ready_line is not None and self.ready_line in line:
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.popen.poll() is not None:
                self._join()
                raise AssertionError(
                    f"{self.name} exited with code {self.popen.returncode} before {self.ready_line!r}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not print {self.ready_line!r} within {timeout:g} s:\n{self.output}"
                )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL this process only, as a crash would."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        self._reap(10.0)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait `grace` seconds, then SIGKILL; returns the exit code."""
        if self.popen is None:
            return None
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        return self._reap(10.0)

    def _reap(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        self.returncode = self.popen.wait(timeout)
        self._join()
        return self.returncode

    def _join(self) -> None:
        for pump in self._pumps:
            pump.join(2.0)


# -- dagnats serve -----------------------------------------------------------------


class Serve:
    """`dagnats serve` as a subprocess: embedded nats-server (default) or `--external`.

    The embedded nats-server is a child of the serve process in a session of
    its own; its PID is recorded once the engine is ready, so that a serve
    killed with SIGKILL does not leave it running.
    """

    READY = "engine ready"

    def __init__(
        self, nats_url: str, *, data_dir: Path | None = None, external: bool = False, extra: Sequence[str] = ()
    ) -> None:
        assert external or data_dir is not None, "an embedded serve needs a data dir"
        self.url, self.data_dir, self.external = nats_url, data_dir, external
        self.extra = list(extra)
        self.proc: Proc | None = None
        self.history: list[Proc] = []  # every serve process started, for the messages
        self._nats_children: list[tuple[int, str]] = []

    @property
    def argv(self) -> list[str]:
        argv = [*CLI, "serve", "--nats-url", self.url, *self.extra]
        if self.external:
            argv.append("--external")
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        return argv

    def start(self, timeout: float = 30.0) -> Serve:
        assert not self.running, "serve is already running"
        self.proc = Proc("dagnats serve", self.argv, base_env(), ready_line=self.READY)
        self.history.append(self.proc)
        try:
            self.proc.start(timeout)
        finally:
            self._record_children()
        return self

    def _record_children(self) -> None:
        if self.proc is None or self.proc.popen is None:
            return
        for pid in child_pids(self.proc.pid):
            cmd = _cmdline(pid)
            if "nats-server" in cmd:
                self._nats_children.append((pid, cmd))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(f"--- serve pid {p.popen.pid if p.popen else '?'} ---\n{p.output}" for p in self.history)

    def kill(self) -> None:
        """kill -9 the `dagnats serve` process only (its nats-server, if any, lives on)."""
        assert self.proc is not None
        self.proc.kill()

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        code = self.proc.stop(grace) if self.proc is not None else None
        for pid, cmd in self._nats_children:
            stop_foreign_pid(pid, cmd)
        self._nats_children.clear()
        return code

    def orphans(self) -> list[int]:
        """Recorded nats-server children still alive."""
        return [pid for pid, cmd in self._nats_children if _alive(pid) and _cmdline(pid) == cmd]


# -- the CLI -------------------------------------------------------------------------


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """Runs `dagnats ...` against one NATS URL (env DAGNATS_NATS_URL), from the repo root."""

    def __init__(self, nats_url: str, cwd: Path = ROOT) -> None:
        self.url, self.cwd = nats_url, cwd

    def __call__(
        self, *args: str, json: bool = False, check: bool = True, timeout: float = 30.0, raw: bool = False
    ) -> Any:
        """`Result(returncode, stdout, stderr)`, or with `json=True` the parsed stdout.

        `json=True` adds `--json`; with `raw=True` it still returns the Result.
        `check` fails the test on a non-zero exit, showing both streams.
        """
        argv = [*CLI, *args, *(["--json"] if json else [])]
        done = subprocess.run(
            argv,
            check=False,
            env=base_env(self.url),
            cwd=self.cwd,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        result = Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise AssertionError(
                f"`dagnats {' '.join(args)}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        if json and not raw and result.returncode == 0:
            return _json.loads(result.stdout)
        return result

    # -- conveniences built on the commands above ------------------------------------

    def register(self, definition: dict[str, Any] | Path, tmp_path: Path | None = None) -> Result:
        if isinstance(definition, dict):
            assert tmp_path is not None
            path = tmp_path / f"{definition['name']}.json"
            path.write_text(_json.dumps(definition))
            definition = path
        return self("workflow", "register", str(definition))

    def start(self, workflow: str, data: Any = None) -> str:
        args = ["run", "start", workflow] + ([] if data is None else [_json.dumps(data)])
        return self(*args, json=True)["run_id"]

    def status(self, run_id: str) -> dict[str, Any]:
        return self("run", "status", run_id, json=True)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self("run", "events", run_id, json=True)

    def wait_status(self, run_id: str, statuses: str | Iterable[str], timeout: float = 20.0) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        seen: dict[str, Any] = {}

        def probe():
            result = self("run", "status", run_id, json=True, check=False, raw=True)
            if result.returncode == 0:
                seen["run"] = _json.loads(result.stdout)
                return seen["run"] if seen["run"]["status"] in wanted else None
            seen["error"] = result.stderr
            return None

        try:
            return wait_for(probe, timeout, f"run {run_id} to become {sorted(wanted)}", interval=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}; last seen: {seen}") from None

    def runs(self, attempts: int = 5) -> list[dict[str, Any]]:
        """`run list --json`; an empty answer is asked again (see the KV keys race in the report)."""
        for _ in range(attempts):
            runs = self("run", "list", json=True)
            if runs:
                return runs
            time.sleep(0.1)
        return runs

    def workflows(self, attempts: int = 5) -> list[dict[str, Any]]:
        """`workflow list --json`; an empty answer is asked again, as `runs`."""
        for _ in range(attempts):
            defs = self("workflow", "list", json=True)
            if defs:
                return defs
            time.sleep(0.1)
        return defs


# -- workers -----------------------------------------------------------------------

WORKER_PRELUDE = '''\
"""Generated by tests/e2e_support.py."""
import asyncio
import json
import os
import time

from dagnats.infra.worker import Permanent, TaskContext, Worker

JOURNAL = {journal!r}


def journal(ctx, phase, **extra):
    """Append one line about this execution to JOURNAL, fsynced before returning."""
    line = json.dumps({{"phase": phase, "run": ctx.run_id, "step": ctx.step_id,
                       "attempt": ctx.attempt, "pid": os.getpid(), "t": time.time(), **extra}})
    fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def executions(run_id, step_id):
    """How many executions of this step have begun so far (from the journal)."""
    try:
        with open(JOURNAL) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return 0
    return sum(1 for r in rows if r["phase"] == "begin" and r["run"] == run_id and r["step"] == step_id)


w = Worker({worker_args})

'''

WORKER_EPILOGUE = """

if __name__ == "__main__":
    w.run()
"""


@dataclass
class Execution:
    run: str
    step: str
    attempt: int
    pid: int
    start: float
    end: float | None


class Journal:
    """The fsynced journal the generated workers append to: one JSON line per phase."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        # A line being written right now may be incomplete: only whole lines count.
        return [_json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def executions(self, run_id: str | None = None, step: str | None = None) -> list[Execution]:
        """Every execution that began, with its end time once it finished."""
        found: list[Execution] = []
        for row in self.rows():
            if (run_id and row["run"] != run_id) or (step and row["step"] != step):
                continue
            if row["phase"] == "begin":
                found.append(Execution(row["run"], row["step"], row["attempt"], row["pid"], row["t"], None))
            elif row["phase"] == "end":
                # The latest open execution of the same step, attempt and process.
                for e in reversed(found):
                    if (e.run, e.step, e.attempt, e.pid, e.end) == (
                        row["run"],
                        row["step"],
                        row["attempt"],
                        row["pid"],
                        None,
                    ):
                        e.end = row["t"]
                        break
        return found

    def count(self, run_id: str, step: str) -> int:
        return len(self.executions(run_id, step))


class WorkerProc:
    """A worker file generated into `directory` and run with `dagnats worker FILE.py`."""

    READY = "started:"

    def __init__(
        self,
        directory: Path,
        nats_url: str,
        handlers: str,
        *,
        name: str = "worker",
        worker_args: str = "",
        journal: Path | None = None,
    ) -> None:
        self.directory, self.url, self.name = directory, nats_url, name
        self.journal = Journal(journal or directory / "journal.jsonl")
        self.path = directory / f"{name}.py"
        self.path.write_text(
            WORKER_PRELUDE.format(journal=str(self.journal.path), worker_args=worker_args)
            + textwrap.dedent(handlers)
            + WORKER_EPILOGUE
        )
        self.procs: list[Proc] = []

    @classmethod
    def from_file(cls, path: Path, nats_url: str) -> WorkerProc:
        worker = cls.__new__(cls)
        worker.directory, worker.url, worker.name = path.parent, nats_url, path.stem
        worker.journal, worker.path, worker.procs = Journal(path.parent / "journal.jsonl"), path, []
        return worker

    def start(self, timeout: float = 30.0) -> Proc:
        """Start one more process of this worker file; returns once its consumers exist."""
        proc = Proc(
            f"worker {self.path.name}", [*CLI, "worker", str(self.path)], base_env(self.url), ready_line=self.READY
        )
        self.procs.append(proc)
        proc.start(timeout)
        return proc

    def stop(self, grace: float = STOP_GRACE) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace)

    @property
    def output(self) -> str:
        return "\n".join(f"--- worker pid {p.popen.pid if p.popen else '?'} ---\n{p.output}" for p in self.procs)


# -- gates, background commands and restarts (flow-control and run-control tests) ----

# Worker code: paste after the prelude. `await gate(ctx)` blocks the handler until
# the test calls `open_gate(journal, run_id, step_id)`; async, so a worker that
# stops cancels it instead of waiting for it.
GATE_HANDLERS = '''
GATES = os.path.join(os.path.dirname(JOURNAL), "gates")


async def gate(ctx, limit=60.0):
    """Wait until the test opens this execution's gate (a file), at most `limit` seconds."""
    path = os.path.join(GATES, f"{ctx.run_id}.{ctx.step_id}")
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
'''


def open_gate(journal: Journal, run_id: str, step: str) -> None:
    """Let a handler waiting in `gate(ctx)` for this run and step return."""
    gates = journal.path.parent / "gates"
    gates.mkdir(exist_ok=True)
    (gates / f"{run_id}.{step}").touch()


class CliCall:
    """One `dagnats ...` command left running (e.g. a blocking `run wait`); `result()` collects it."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [*CLI, *args],
            env=base_env(cli.url),
            cwd=cli.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def result(self, timeout: float) -> Result:
        """Wait up to `timeout` seconds for the command to exit (else fail the test)."""
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"`dagnats {' '.join(self.args)}` still running after {timeout:g} s") from None
        return Result(self.popen.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    def stop(self) -> None:
        """SIGKILL the command if it still runs (its PID only) and reap it."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.popen.communicate(timeout=10)


def restart_serve(serve: Serve, timeout: float = 30.0) -> tuple[int, int]:
    """SIGTERM `dagnats serve` (and its nats-server), start it again on the same data
    dir and port; returns (old pid, new pid)."""
    old = serve.pid
    assert serve.stop() == 0, f"serve did not stop cleanly:\n{serve.output}"
    serve.start(timeout)
    return old, serve.pid


def wait_inbox_drained(cli: Cli, timeout: float = 10.0) -> None:
    """Wait until the engine has recorded every fact sent to any run (RUN_INBOX is empty).

    Call it a moment after a worker finished a handler: its report leaves the
    worker just after the handler's last journal line.
    """
    time.sleep(0.3)
    wait_for(
        lambda: cli("status", json=True)["jetstream"]["streams"]["RUN_INBOX"]["messages"] == 0,
        timeout,
        "the run inbox to drain",
        interval=0.1,
    )


# -- one engine and one worker per test module -----------------------------------------

TERMINAL = {"completed", "failed", "cancelled", "compensated", "compensate_failed"}


def step(id: str, task: str, depends_on: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """One step of a workflow definition."""
    return {"id": id, "task": task, "depends_on": list(depends_on), **extra}


@dataclass
class Env:
    """A module's `dagnats serve`, its worker (running HANDLERS) and their journal."""

    cli: Cli
    journal: Journal
    serve: Serve
    worker: WorkerProc
    tmp: Path

    def register(self, definition: dict) -> None:
        self.cli.register(definition, self.tmp)

    def wait(self, run_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """`dagnats run wait` until the run is terminal, then its `run status --json`."""
        done = self.cli("run", "wait", run_id, "--timeout", str(timeout), "--json", check=False, timeout=timeout + 15)
        run = self.cli.status(run_id)
        assert run["status"] in TERMINAL, f"{done}\n{run}\n{self.diagnose()}"
        return run

    def rows(
        self, run_id: str, step: str | None = None, phase: str = "begin", journal: Journal | None = None
    ) -> list[dict[str, Any]]:
        """The journal lines of one run (and step) in one phase, in the order written."""
        return [
            r
            for r in (journal or self.journal).rows()
            if r["run"] == run_id and (step is None or r["step"] == step) and r["phase"] == phase
        ]

    def began(self, run_id: str, step: str, journal: Journal | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the step's handler has begun; its journal line."""
        return wait_for(
            lambda: (self.rows(run_id, step, journal=journal) or [None])[0],
            timeout,
            f"step {step} of {run_id} to begin",
        )

    def running(self, run_id: str, step: str) -> dict[str, Any]:
        """Wait until the engine shows the step running (the worker reported step.started)."""
        self.began(run_id, step)

        def shown_running():
            run = self.cli.status(run_id)
            return run if run["steps"][step]["status"] == "running" else None

        return wait_for(shown_running, 10, f"step {step} to show running")

    def diagnose(self) -> str:
        return f"{self.serve.output}\n{self.worker.output}"


@contextlib.contextmanager
def module_env(tmp: Path, handlers: str, max_concurrent: int) -> Iterator[Env]:
    """Start `dagnats serve` (embedded NATS) and one worker process; stop both after."""
    url = f"nats://127.0.0.1:{free_port()}"
    serve = Serve(url, data_dir=tmp / "data")
    worker = WorkerProc(tmp, url, handlers, worker_args=f"max_concurrent={max_concurrent}, drain_timeout=1")
    try:
        serve.start()
        worker.start()
        yield Env(Cli(url), worker.journal, serve, worker, tmp)
    finally:
        worker.stop()
        serve.stop()
