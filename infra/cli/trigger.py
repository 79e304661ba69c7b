"""``dagnats trigger create|list|enable|disable|delete|fire``: runs started by cron, webhook, subject or http.

Triggers are records in the ``triggers`` bucket (infra/triggers.py); every
running engine picks a change up within a second. ``fire`` starts a run of
the trigger's workflow now, with the trigger's envelope as its input.
"""

from __future__ import annotations

import argparse
from typing import Any

from dagnats.domain.errors import InvalidInput
from dagnats.domain.triggers import DEFAULT_HTTP_MAX_BODY, DEFAULT_HTTP_TIMEOUT_MS, Debounce, HttpRoute, redacted

from ..triggers import Cron, Subject, Trigger, TriggerStore, Webhook, check_trigger, envelope
from .render import table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    trigger = commands.add_parser(
        "trigger", help="runs started by cron, webhooks, NATS subjects or HTTP requests"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = trigger.add_parser("create", parents=[common], help="create (or replace) trigger ID for WORKFLOW")
    p.add_argument("id")
    p.add_argument("workflow")
    p.add_argument("--cron", help='5-field cron expression, e.g. "*/5 * * * *"')
    p.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default UTC)")
    p.add_argument("--webhook", metavar="PATH", help="/hooks/NAME: POST there starts a run")
    p.add_argument("--subject", help="NATS subject: each message starts a run")
    p.add_argument(
        "--http", metavar="PATH", help="/api/NAME[/NAME...]: a request starts a run its respond step answers"
    )
    p.add_argument("--method", default="POST", help="--http: the route's method (default POST)")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_HTTP_TIMEOUT_MS, help="--http: wait for the answer")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_HTTP_MAX_BODY, help="--http: request body bound")
    p.add_argument("--idempotency-header", help="--http: a header whose value makes calls idempotent")
    p.add_argument("--secret", help="webhook or http HMAC secret (X-Signature-256), at least 16 characters")
    p.add_argument("--debounce", metavar="PERIOD", help='webhook or subject: one run per burst, after PERIOD ("30s")')
    p.add_argument(
        "--debounce-timeout",
        metavar="DURATION",
        help="--debounce: run a burst this long after its first fire at the latest",
    )
    p.add_argument("--debounce-key", metavar="PATH", help="--debounce: a burst per value at this dot path of the data")
    p.add_argument("--disabled", action="store_true", help="create it disabled")
    p.set_defaults(func=cmd_create)
    p = trigger.add_parser("list", parents=[common], help="list triggers")
    p.set_defaults(func=cmd_list)
    for action, what in (("enable", "enable"), ("disable", "disable"), ("delete", "delete")):
        p = trigger.add_parser(action, parents=[common], help=f"{what} trigger ID")
        p.add_argument("id")
        p.set_defaults(func=cmd_change, change=action)
    p = trigger.add_parser("fire", parents=[common], help="start a run of trigger ID's workflow now")
    p.add_argument("id")
    p.add_argument("data", nargs="?", help="JSON data for the envelope")
    p.set_defaults(func=cmd_fire)


def _store(client: Any) -> TriggerStore:
    return TriggerStore(client.nc.jetstream())


def cmd_create(args: argparse.Namespace) -> int:
    from . import _show

    if args.secret and not (args.webhook or args.http):
        raise InvalidInput("--secret goes with --webhook or --http")
    trigger = check_trigger(
        Trigger(
            id=args.id,
            workflow=args.workflow,
            enabled=not args.disabled,
            cron=Cron(args.cron, args.timezone) if args.cron else None,
            webhook=Webhook(args.webhook, args.secret) if args.webhook else None,
            subject=Subject(args.subject) if args.subject else None,
            http=_http_route(args) if args.http else None,
            debounce=_debounce(args) if args.debounce else None,
        )
    )

    async def create(client: Any) -> Any:
        await client.workflow(trigger.workflow)  # WorkflowNotFound before anything is stored
        return _builtins(await _store(client).put(trigger))

    return _show(args, create, lambda t: f"Trigger {t['id']} ({_kind(t)}) starts {t['workflow']}")


def cmd_list(args: argparse.Namespace) -> int:
    from . import _show

    async def list_all(client: Any) -> Any:
        return [_builtins(t) for t in await _store(client).all()]

    return _show(args, list_all, render_list)


def cmd_change(args: argparse.Namespace) -> int:
    from . import _show

    async def change(client: Any) -> Any:
        store = _store(client)
        if args.change == "delete":
            await store.delete(args.id)
            return {"id": args.id, "deleted": True}
        return _builtins(await store.set_enabled(args.id, args.change == "enable"))

    return _show(args, change, lambda t: f"Trigger {args.id} {args.change}d")


def cmd_fire(args: argparse.Namespace) -> int:
    from . import _parse_input, _show

    data = _parse_input(args.data, "trigger data")

    async def fire(client: Any) -> Any:
        t = await _store(client).get(args.id)
        run_id = await client.start(t.workflow, envelope(t, "manual", data))
        return {"run_id": run_id, "trigger": t.id}

    return _show(args, fire, lambda a: f"Run {a['run_id']} started by trigger {a['trigger']}")


def _http_route(args: argparse.Namespace) -> HttpRoute:
    return HttpRoute(
        args.http, args.method.upper(), args.timeout_ms, args.max_body_bytes, args.secret, args.idempotency_header
    )


def _debounce(args: argparse.Namespace) -> Debounce:
    try:
        return Debounce(period=args.debounce, timeout=args.debounce_timeout or 0, key=args.debounce_key or "")
    except ValueError as err:
        raise InvalidInput(f"--debounce: {err}") from None


def _builtins(t: Trigger) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(redacted(t))


def _kind(t: dict[str, Any]) -> str:
    if t.get("cron"):
        return f"cron {t['cron']['expression']} {t['cron'].get('timezone', 'UTC')}"
    if t.get("webhook"):
        what = f"webhook {t['webhook']['path']}" + (" (signed)" if t["webhook"].get("secret") else "")
    elif t.get("http"):
        what = f"http {t['http']['method']} {t['http']['path']}" + (" (signed)" if t["http"].get("secret") else "")
    else:
        what = f"subject {t['subject']['subject']}"
    return what + (f" (debounced {t['debounce']['period'] / 1e9:g}s)" if t.get("debounce") else "")


def render_list(triggers: list[dict[str, Any]]) -> str:
    if not triggers:
        return "No triggers."
    rows = [(t["id"], t["workflow"], _kind(t), "yes" if t.get("enabled", True) else "no") for t in triggers]
    return table(("ID", "WORKFLOW", "FIRES ON", "ENABLED"), rows)
