"""The ``dagnats`` command: parse -> call -> render.

Every command takes ``--json`` for exact machine output. Errors print one
line on stderr (``error: ...``) and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from dagnats.domain.errors import DagnatsError, InvalidInput
from dagnats.domain.validate import parse_and_validate
from dagnats.domain.values import MAX_DEPTH, check_json_value

from .. import event_loop
from ..client import Client
from ..logs import FORMATS, log_format, setup_logging
from ..otel_config import use_endpoint
from ..wire.connection import nats_url
from . import cluster as cluster_cli
from . import dlq, render
from . import drill as drill_cli
from . import reactive as reactive_cli
from . import trace as trace_cli
from . import trigger as trigger_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    serving = args.command in ("serve", "worker")
    if serving:
        use_endpoint(args.otlp_endpoint)  # before the log export reads the environment
    setup_logging(
        logging.INFO if serving else logging.WARNING,
        log_format(getattr(args, "log_format", None)),
        service_name=f"dagnats-{'engine' if args.command == 'serve' else 'worker'}" if serving else "",
    )
    logging.getLogger("nats").setLevel(logging.NOTSET if serving else logging.CRITICAL)
    try:
        return args.func(args) or 0
    except DagnatsError as err:
        return _fail(args, str(err))
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, message: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a flag given before the subcommand from being reset after it.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--nats-url", default=argparse.SUPPRESS, help="NATS URL (env DAGNATS_NATS_URL, default nats://127.0.0.1:4222)"
    )

    parser = argparse.ArgumentParser(
        prog="dagnats", description="Durable workflows on NATS JetStream.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run NATS (embedded) and the engine")
    serve.add_argument("--data-dir", type=Path, help="JetStream data directory (default ~/.local/share/dagnats)")
    serve.add_argument("--external", action="store_true", help="use the NATS server at --nats-url")
    serve.add_argument("--max-live-runs", type=int, default=512, help="live run actors before passivation")
    serve.add_argument(
        "--replicas", type=_positive, help="copies of every stream and bucket (default: 3 on a cluster, else 1)"
    )
    serve.add_argument(
        "--partitions", type=_positive, help="partitions runs are divided into (fixed when first created; default 16)"
    )
    serve.add_argument(
        "--http",
        default=os.environ.get("DAGNATS_HTTP"),
        metavar="HOST:PORT|off",
        help="HTTP API, workers, triggers and console (default 127.0.0.1:8080, skipped if taken; env DAGNATS_HTTP)",
    )
    serve.add_argument(
        "--otlp-endpoint", help="send traces and metrics by OTLP here (sets OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    serve.add_argument(
        "--log-format", choices=FORMATS, help="text (default) or json: one object per line (env DAGNATS_LOG_FORMAT)"
    )
    serve.set_defaults(func=cmd_serve)

    status = commands.add_parser("status", parents=[common], help="show NATS and engine status")
    status.set_defaults(func=cmd_status)

    limits = commands.add_parser(
        "limits", parents=[common], help="show every rate and concurrency limit: use, queue, why the head waits"
    )
    limits.add_argument("--prefix", default="", help="only limit keys starting with PREFIX (e.g. task.charge)")
    limits.add_argument("--queue", type=_positive, default=20, help="waiters shown per queue (default 20)")
    limits.set_defaults(func=cmd_limits)

    worker = commands.add_parser("worker", parents=[common], help="run the Worker defined in FILE.py")
    worker.add_argument("file")
    worker.add_argument(
        "--otlp-endpoint", help="send traces and metrics by OTLP here (sets OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    worker.add_argument(
        "--log-format", choices=FORMATS, help="text (default) or json: one object per line (env DAGNATS_LOG_FORMAT)"
    )
    worker.set_defaults(func=cmd_worker)

    wf = commands.add_parser("workflow", help="register and inspect workflows").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = wf.add_parser("register", parents=[common], help="register (or update) a workflow from a JSON file")
    p.add_argument("file")
    p.set_defaults(func=cmd_workflow_register)
    p = wf.add_parser("list", parents=[common], help="list registered workflows")
    p.set_defaults(func=cmd_workflow_list)
    p = wf.add_parser("show", parents=[common], help="show a workflow")
    p.add_argument("name")
    p.set_defaults(func=cmd_workflow_show)
    p = wf.add_parser("delete", parents=[common], help="delete a workflow")
    p.add_argument("name")
    p.set_defaults(func=cmd_workflow_delete)

    run = commands.add_parser("run", help="start and inspect runs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = run.add_parser("start", parents=[common], help="start a run of workflow NAME")
    p.add_argument("name")
    p.add_argument("input", nargs="?", help="run input as JSON (default null)")
    p.add_argument("--input-file", help="read the run input (JSON) from this file, or - for stdin")
    p.add_argument("--watch", action="store_true", help="print step events until the run ends")
    p.add_argument("--idempotency-key", help="a second start with the same key returns the first run")
    p.add_argument("--traceparent", help="continue this W3C trace (default: the TRACEPARENT environment variable)")
    p.add_argument("--tracestate", help="the W3C tracestate beside --traceparent (default: $TRACESTATE)")
    p.add_argument("--baggage", help="W3C baggage the run's tasks carry (default: $BAGGAGE)")
    p.set_defaults(func=cmd_run_start)
    for name, func, text in (
        ("status", cmd_run_status, "show a run and its steps"),
        ("events", cmd_run_events, "show a run's event history"),
        ("output", cmd_run_output, "print a run's output"),
        ("cancel", cmd_run_cancel, "cancel a run"),
        ("pause", cmd_run_pause, "stop dispatching new steps (in-flight steps finish)"),
        ("resume", cmd_run_resume, "resume a paused run"),
        ("inspect", cmd_run_inspect, "steps with timings, errors and blockers"),
        ("delete", cmd_run_delete, "delete a finished run's history and snapshot"),
    ):
        p = run.add_parser(name, parents=[common], help=text)
        p.add_argument("run_id")
        p.set_defaults(func=func)
    trace_cli.add_parser(run, common)
    p = run.add_parser("wait", parents=[common], help="wait until a run (or one step) finishes; print its output")
    p.add_argument("run_id")
    p.add_argument("--step", help="wait for this step only")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.set_defaults(func=cmd_run_wait)
    p = run.add_parser("signal", parents=[common], help="send a named signal with JSON data to a run")
    p.add_argument("run_id")
    p.add_argument("name")
    p.add_argument("data", nargs="?")
    p.set_defaults(func=cmd_run_signal)
    p = run.add_parser("approve", parents=[common], help="approve STEP of a run, which waits for an approval")
    p.add_argument("run_id")
    p.add_argument("step")
    p.add_argument("--comment", default="", help="kept in the step's output")
    p.set_defaults(func=cmd_run_approve)
    p = run.add_parser("reject", parents=[common], help="reject STEP of a run, which waits for an approval")
    p.add_argument("run_id")
    p.add_argument("step")
    p.add_argument("--reason", default="", help="the step's error")
    p.set_defaults(func=cmd_run_reject)
    p = run.add_parser("list", parents=[common], help="list runs, newest first")
    p.add_argument("--workflow")
    p.add_argument("--status")
    p.add_argument("--limit", type=_positive, default=100, help="at most this many runs (1-10000)")
    p.set_defaults(func=cmd_run_list)

    dlq.add_parser(commands, common)
    trigger_cli.add_parser(commands, common)
    event = commands.add_parser("event", help="external events").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = event.add_parser("publish", parents=[common], help="publish event NAME with JSON DATA")
    p.add_argument("name")
    p.add_argument("data", nargs="?")
    p.set_defaults(func=cmd_event_publish)
    cluster_cli.add_parser(commands, common)
    drill_cli.add_parser(commands, common)
    reactive_cli.add_parser(commands, common)
    return parser


# ---- helpers ----------------------------------------------------------------------


def _url(args: argparse.Namespace) -> str:
    return nats_url(getattr(args, "nats_url", None))


def _call(args: argparse.Namespace, operation):
    async def go():
        async with Client(_url(args)) as client:
            return await operation(client)

    return asyncio.run(go())


def _show(args: argparse.Namespace, operation, human) -> int:
    """Call the engine, print the result: exact JSON with --json, else ``human(result)``."""
    result = _call(args, operation)
    _print_json(result) if args.json else print(human(result))
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number between 1 and 10000, not {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, not {value}")
    return value


def _input_text(args: argparse.Namespace) -> str | None:
    if args.input_file is None:
        return args.input
    if args.input is not None:
        raise InvalidInput("give the input as an argument or with --input-file, not both")
    if args.input_file == "-":
        return sys.stdin.read()
    try:
        return Path(args.input_file).read_text()
    except OSError as err:
        raise DagnatsError(f"cannot read {args.input_file}: {err.strerror}") from None


def _parse_input(text: str | None, what: str) -> Any:
    """``text`` as a JSON value; refused before anything is sent if it is not plain JSON."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(
            f"not valid JSON ({err.msg} at position {err.pos}); quote strings as JSON, e.g. '\"World\"'"
        ) from None
    except RecursionError:
        raise InvalidInput(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    # json.loads takes NaN, Infinity and 1e999, which JSON has not: they would be stored as null.
    return check_json_value(value, what)


# ---- commands -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from ..engine.serve import serve
    from ..engine.server import ServerError
    from ..http.server import AddressTaken

    use_endpoint(args.otlp_endpoint)

    try:
        event_loop.run(
            serve(
                _url(args),
                args.data_dir,
                args.external,
                args.max_live_runs,
                replicas=args.replicas,
                partitions=args.partitions,
                http=args.http,
            )
        )
    except (ServerError, AddressTaken) as err:
        return _fail(args, str(err))
    except OSError as err:
        return _fail(args, f"cannot connect to NATS at {_url(args)}: {err}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.engine_status(), render.engine_status)


def cmd_limits(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.limits(args.prefix, args.queue), lambda items: render.limits(items, args.prefix))


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from ..worker import load_worker

    if getattr(args, "nats_url", None):
        os.environ["DAGNATS_NATS_URL"] = args.nats_url
    from ..tracing import setup_tracing

    use_endpoint(args.otlp_endpoint)
    setup_tracing("dagnats-worker")
    worker = load_worker(args.file)
    worker.run()
    return 0


def _read_definition(path: str):
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DagnatsError(f"cannot read {path}: {err.strerror}") from None
    return parse_and_validate(data, path)


def cmd_workflow_register(args: argparse.Namespace) -> int:
    wf = _read_definition(args.file)
    result = _call(args, lambda c: c.register(wf))
    if args.json:
        _print_json(result)
    else:
        print(f"Workflow {result['action']}: {result['name']} ({result['steps']} steps)")
        for trigger_id in result.get("triggers", []):
            print(f"Trigger declared: {trigger_id}")
        print(f"Start a run with: dagnats run start {result['name']} [INPUT_JSON] --watch", file=sys.stderr)
    return 0


def cmd_workflow_list(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.workflows(), render.workflow_list)


def cmd_workflow_show(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.workflow(args.name), render.workflow_show)


def cmd_workflow_delete(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.delete_workflow(args.name), lambda r: f"Workflow deleted: {args.name}")


def cmd_run_start(args: argparse.Namespace) -> int:
    data = _parse_input(_input_text(args), "run input")

    async def go(client: Client) -> int:
        run_id = await client.start(
            args.name,
            data,
            idempotency_key=args.idempotency_key,
            trace_parent=args.traceparent or os.environ.get("TRACEPARENT") or None,
            trace_state=args.tracestate or os.environ.get("TRACESTATE") or None,
            baggage=args.baggage or os.environ.get("BAGGAGE") or None,
        )
        if not args.watch:
            _print_json({"run_id": run_id}) if args.json else print(f"Run {run_id} started")
            return 0
        if not args.json:
            print(f"Run {run_id} started", flush=True)
        async with contextlib.aclosing(client.watch(run_id)) as events:
            async for event in events:
                line = None if args.json else render.watch_line(event)
                if line:
                    print(line, flush=True)
        final = await client.status(run_id)
        if args.json:
            _print_json(final)
        return 0 if event.type == "workflow.completed" else 1  # the outcome watched; status may lag

    return _call(args, go)


def cmd_run_status(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.status(args.run_id), render.run_status)


def cmd_run_events(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.events(args.run_id), render.events)


def cmd_run_output(args: argparse.Namespace) -> int:
    run = _call(args, lambda c: c.status(args.run_id))
    if run["status"] != "completed":
        detail = f": {run['error']}" if run.get("error") else ""
        raise DagnatsError(f"run {run['run_id']} is {run['status']}{detail}; it has no output")
    if args.json:
        print(json.dumps(run["output"], ensure_ascii=False))
    else:
        _print_json(run["output"])
    return 0


def cmd_run_cancel(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.cancel(args.run_id), render.cancelled)


def cmd_run_list(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.runs(args.workflow, args.status, args.limit), render.run_list)


def cmd_run_pause(args: argparse.Namespace) -> int:
    return _show(
        args, lambda c: c.pause(args.run_id), lambda r: f"Run {args.run_id} pausing (in-flight steps finish first)"
    )


def cmd_run_resume(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.resume(args.run_id), lambda r: f"Run {args.run_id} resumed")


def cmd_run_inspect(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.inspect(args.run_id), render.inspect)


def cmd_run_delete(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.delete(args.run_id), lambda r: f"Run {args.run_id} deleted")


def cmd_run_wait(args: argparse.Namespace) -> int:
    run = _call(args, lambda c: c.wait(args.run_id, args.step, args.timeout))
    if args.step:
        step = run["steps"][args.step]
        ok, value, status = step["status"] == "completed", step["output"], step["status"]
        problem = step.get("error") or step.get("skip_reason") or status
    else:
        ok, value, status = run["status"] == "completed", run["output"], run["status"]
        problem = run.get("error") or status
    if args.json:
        _print_json(
            {
                "run_id": run["run_id"],
                "step": args.step,
                "status": status,
                "output": value,
                "error": None if ok else problem,
            }
        )
    elif ok:
        _print_json(value)
    else:
        what = f"step {args.step}" if args.step else f"run {run['run_id']}"
        print(f"error: {what} is {status}: {problem}", file=sys.stderr)
    return 0 if ok else 1


def cmd_run_approve(args: argparse.Namespace) -> int:
    return _show(
        args, lambda c: c.approve(args.run_id, args.step, args.comment), lambda r: f"Step {args.step} approved"
    )


def cmd_run_reject(args: argparse.Namespace) -> int:
    return _show(args, lambda c: c.reject(args.run_id, args.step, args.reason), lambda r: f"Step {args.step} rejected")


def cmd_run_signal(args: argparse.Namespace) -> int:
    data = _parse_input(args.data, "signal data")
    result = _call(args, lambda c: c.signal(args.run_id, args.name, data))
    _print_json(result) if args.json else print(f"Signal sent: {args.name}")
    return 0


def cmd_event_publish(args: argparse.Namespace) -> int:
    from dagnats.domain.identifiers import check_identifier

    check_identifier("event name", args.name)
    data = _parse_input(args.data, "event data")
    seq = _call(args, lambda c: c.publish_event(args.name, data))
    _print_json({"event": args.name, "seq": seq}) if args.json else print(f"Event published: {args.name} (seq {seq})")
    return 0
