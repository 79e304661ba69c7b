"""The web console at ``/console/``: server-rendered pages over the same operations as the API.

Pages: dashboard, workflows (each with its DAG drawn and a start form), runs
(filters; refreshes itself while live), a run (DAG coloured by status, a
waterfall of step timings, the event timeline, input and output, and
cancel / pause / resume / signal / approve / reject buttons), dead letters
(replay), limits and triggers (enable, disable, fire). Plain HTML and CSS,
no script and no build step; live pages refresh themselves every 2 s.

Mutations are form POSTs protected against CSRF by a double-submit token:
a random ``dagnats_csrf`` cookie (SameSite=Strict) that every form repeats
in a hidden field, compared in constant time; a POST without the match is a
403. With ``DAGNATS_API_TOKEN`` set, ``/console/login`` takes the token and
keeps it in an HttpOnly, SameSite=Strict session cookie (guard.py).
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from dagnats.domain.errors import DagnatsError
from dagnats.domain.events import parse_timestamp
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.state import TERMINAL_RUN_STATUSES

from ..triggers import TriggerStore, envelope
from .guard import SESSION_COOKIE, same_secret
from .operations import Operations

CSRF_COOKIE = "dagnats_csrf"
COLOURS = {
    "completed": "#2e9d5b",
    "running": "#2f7de1",
    "queued": "#8fb8ee",
    "pending": "#c9ccd1",
    "failed": "#d64545",
    "skipped": "#a0a4aa",
    "cancelled": "#7b5ea7",
    "recovered": "#d9a53b",
    "paused": "#e0a030",
    "pausing": "#e0a030",
    "compensated": "#b86b2a",
}
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
nav{background:#1d2330;padding:.6rem 1rem}nav a{color:#dfe6f3;margin-right:1.2rem;text-decoration:none}
main{padding:1rem 1.5rem;max-width:72rem}h1{font-size:1.3rem}table{border-collapse:collapse;width:100%;background:#fff}
td,th{border-bottom:1px solid #e4e6ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
.tiles{display:flex;gap:1rem}.tile{background:#fff;padding:1rem 1.4rem;border-radius:6px;min-width:9rem}
.tile b{display:block;font-size:1.8rem}.status{padding:.1rem .45rem;border-radius:4px;color:#fff;font-size:12px}
form.inline{display:inline}button{cursor:pointer;margin:.1rem}pre{background:#fff;padding:.6rem;overflow:auto;max-height:20rem}
.bar{height:12px;background:#2f7de1;border-radius:2px}.err{color:#b00020}section{margin:1.2rem 0}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(status: str) -> str:
    return f'<span class="status" style="background:{COLOURS.get(status, "#666")}">{_esc(status)}</span>'


def _page(request: Request, title: str, body: str, refresh: bool = False) -> HTMLResponse:
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    request.state.csrf = token
    links = "".join(
        f'<a href="/console/{href}">{name}</a>'
        for href, name in (
            ("", "Dashboard"),
            ("workflows", "Workflows"),
            ("runs", "Runs"),
            ("dead-letters", "Dead letters"),
            ("limits", "Limits"),
            ("triggers", "Triggers"),
        )
    )
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{_esc(title)} · dagnats</title>'
        f"<style>{STYLE}</style></head><body><nav>{links}</nav><main><h1>{_esc(title)}</h1>"
        f"{body.replace('%CSRF%', _esc(token))}</main></body></html>"
    )
    response = HTMLResponse(text)
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console")
    return response


def _button(action: str, label: str, fields: dict[str, str] | None = None, extra: str = "") -> str:
    hidden = "".join(f'<input type="hidden" name="{_esc(k)}" value="{_esc(v)}">' for k, v in (fields or {}).items())
    return (
        f'<form class="inline" method="post" action="{_esc(action)}"><input type="hidden" name="csrf" value="%CSRF%">'
        f"{hidden}{extra}<button>{_esc(label)}</button></form>"
    )


def ops(request: Request) -> Operations:
    return request.app.state.ops


# ---- pages ---------------------------------------------------------------------------------


async def dashboard(request: Request) -> Response:
    runs = (await ops(request)("run.list", limit=1000))["runs"]
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    done = [r for r in runs if r["completed_at"] and parse_timestamp(r["completed_at"]) >= hour_ago]
    dead = (await ops(request)("dlq.list", limit=1000))["dead_letters"]
    tiles = [
        ("Active runs", sum(1 for r in runs if r["status"] not in TERMINAL_RUN_STATUSES)),
        ("Failed runs", sum(1 for r in runs if r["status"] == "failed")),
        ("Dead letters", len(dead)),
        ("Finished in the last hour", len(done)),
    ]
    body = (
        '<div class="tiles">'
        + "".join(f'<div class="tile" id="tile-{i}"><b>{n}</b>{_esc(t)}</div>' for i, (t, n) in enumerate(tiles))
        + "</div>"
    )
    failures = [r for r in runs if r["status"] == "failed"][:10]
    body += "<section><h2>Recent failures</h2>" + _runs_table(failures) + "</section>"
    return _page(request, "Dashboard", body, refresh=True)


async def workflows(request: Request) -> Response:
    rows = "".join(
        f'<tr><td><a href="/console/workflows/{_esc(w["name"])}">{_esc(w["name"])}</a></td>'
        f"<td>{_esc(w.get('version', ''))}</td><td>{len(w['steps'])}</td></tr>"
        for w in await ops(request)("workflow.list")
    )
    return _page(request, "Workflows", f"<table><tr><th>Name</th><th>Version</th><th>Steps</th></tr>{rows}</table>")


async def workflow(request: Request) -> Response:
    name = check_identifier("workflow name", request.path_params["name"])
    wf = await ops(request)("workflow.get", name=name)
    form = (
        f'<form method="post" action="/console/workflows/{_esc(name)}/start" id="start">'
        '<input type="hidden" name="csrf" value="%CSRF%"><label>Input (JSON) '
        '<input name="input" id="input" size="50" value="null"></label> <button>Start a run</button></form>'
    )
    definition = f"<section><pre>{_esc(json.dumps(wf, indent=2))}</pre></section>"
    body = f"<section>{_dag(wf['steps'], {})}</section>{form}{definition}"
    return _page(request, f"Workflow {name}", body)


async def runs(request: Request) -> Response:
    q = request.query_params
    workflow_name = q.get("workflow") or None
    status = q.get("status") or None
    page = await ops(request)(
        "run.list", workflow=workflow_name, status=status, limit=100, since=q.get("since") or None
    )
    form = (
        '<form method="get">Workflow <input name="workflow" value="{}"> Status <input name="status" value="{}"> '
        'Since <input name="since" placeholder="RFC3339" value="{}"> <button>Filter</button></form>'
    ).format(_esc(workflow_name or ""), _esc(status or ""), _esc(q.get("since") or ""))
    return _page(request, "Runs", form + _runs_table(page["runs"]), refresh=True)


def _runs_table(items: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td><a href="/console/runs/{_esc(r["run_id"])}">{_esc(r["run_id"])}</a></td>'
        f"<td>{_esc(r['workflow'])}</td><td>{_badge(r['status'])}</td>"
        f"<td>{r.get('steps_done', '')}/{r.get('steps_total', '')}</td><td>{_esc(r['created_at'] or '')}</td></tr>"
        for r in items
    )
    return f"<table><tr><th>Run</th><th>Workflow</th><th>Status</th><th>Steps</th><th>Created</th></tr>{rows}</table>"


async def run_page(request: Request) -> Response:
    run_id = check_identifier("run id", request.path_params["run_id"])
    view = await ops(request)("run.get", run_id=run_id)
    events = (await ops(request)("run.events", run_id=run_id, limit=500))["events"]
    wf = await _definition(request, view["workflow"])
    live = view["status"] not in TERMINAL_RUN_STATUSES
    base = f"/console/runs/{run_id}"
    buttons = ""
    if live:
        buttons += _button(f"{base}/cancel", "Cancel") + _button(f"{base}/pause", "Pause")
        buttons += _button(f"{base}/resume", "Resume")
        buttons += _button(
            f"{base}/signal",
            "Send signal",
            extra='<input name="name" placeholder="signal name" size="10">'
            '<input name="data" placeholder="JSON data" size="14">',
        )
    for step_id, s in view["steps"].items():
        if s["status"] == "running" and _step_type(wf, step_id) == "approval":
            buttons += _button(f"{base}/approve/{step_id}", f"Approve {step_id}")
            buttons += _button(f"{base}/reject/{step_id}", f"Reject {step_id}")
    timeline = "".join(
        f"<tr><td>{e['seq']}</td><td>{_esc(e.get('timestamp', ''))}</td><td>{_esc(e['type'])}</td>"
        f"<td>{_esc(e.get('step_id') or '')}</td></tr>"
        for e in events
    )
    body = (
        f"<p>Workflow <a href='/console/workflows/{_esc(view['workflow'])}'>{_esc(view['workflow'])}</a> · "
        f"<span id='run-status'>{_badge(view['status'])}</span></p><div id='actions'>{buttons}</div>"
        f"<section><h2>DAG</h2>{_dag(wf['steps'] if wf else [], view['steps'])}</section>"
        f"<section><h2>Step timings</h2>{_waterfall(view['steps'])}</section>"
        f"<section><h2>Input</h2><pre>{_esc(json.dumps(view['input'], indent=2))}</pre>"
        f"<h2>Output</h2><pre id='output'>{_esc(json.dumps(view['output'], indent=2))}</pre>"
        + (f"<p class='err'>{_esc(view['error'])}</p>" if view.get("error") else "")
        + f"</section><section><h2>Events</h2><table><tr><th>Seq</th><th>Time</th><th>Type</th><th>Step</th></tr>"
        f"{timeline}</table></section>"
    )
    return _page(request, f"Run {run_id}", body, refresh=live)


async def _definition(request: Request, name: str) -> dict[str, Any] | None:
    try:
        return await ops(request)("workflow.get", name=name)
    except DagnatsError:
        return None


def _step_type(wf: dict[str, Any] | None, step_id: str) -> str:
    for step in (wf or {}).get("steps", []):
        if step["id"] == step_id:
            return step.get("type", "normal")
    return ""


def _dag(steps: list[dict[str, Any]], states: dict[str, Any]) -> str:
    """An SVG of the steps in layers (each step one layer below its deepest dependency)."""
    depth: dict[str, int] = {}

    def layer(step_id: str, seen: frozenset[str] = frozenset()) -> int:
        if step_id not in depth:
            step = next((s for s in steps if s["id"] == step_id), {})
            deps = [d for d in step.get("depends_on", []) if d not in seen]
            depth[step_id] = 1 + max((layer(d, seen | {step_id}) for d in deps), default=-1)
        return depth[step_id]

    for s in steps:
        layer(s["id"])
    columns: dict[int, list[str]] = {}
    for step_id, d in depth.items():
        columns.setdefault(d, []).append(step_id)
    place = {sid: (20 + d * 170, 20 + i * 60) for d, ids in columns.items() for i, sid in enumerate(ids)}
    width = 40 + 170 * (max(columns, default=0) + 1)
    height = 40 + 60 * max((len(v) for v in columns.values()), default=1)
    parts = [f'<svg class="dag" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for s in steps:
        for dep in s.get("depends_on", []):
            if dep in place:
                (x1, y1), (x2, y2) = place[dep], place[s["id"]]
                parts.append(f'<line x1="{x1 + 130}" y1="{y1 + 18}" x2="{x2}" y2="{y2 + 18}" stroke="#888"/>')
    for sid, (x, y) in place.items():
        status = states.get(sid, {}).get("status", "pending" if states else "")
        fill = COLOURS.get(status, "#fff")
        text = "#fff" if status and status != "pending" else "#1d2330"
        parts.append(
            f'<g data-step="{_esc(sid)}" data-status="{_esc(status)}"><rect x="{x}" y="{y}" width="130" height="36" '
            f'rx="6" fill="{fill}" stroke="#555"/><text x="{x + 65}" y="{y + 22}" text-anchor="middle" '
            f'fill="{text}" font-size="12">{_esc(sid)}</text></g>'
        )
    return "".join(parts) + "</svg>"


def _waterfall(steps: dict[str, Any]) -> str:
    spans = []
    for sid, s in steps.items():
        start = s.get("queued_at") or s.get("started_at")
        if start:
            end = s.get("finished_at") or datetime.now(UTC).isoformat()
            spans.append((sid, parse_timestamp(start), parse_timestamp(end), s["status"]))
    if not spans:
        return "<p>No step has started yet.</p>"
    t0 = min(a for _, a, _, _ in spans)
    total = max((b - t0).total_seconds() for _, _, b, _ in spans) or 1e-3
    rows = "".join(
        f"<tr><td>{_esc(sid)}</td><td style='width:70%'><div class='bar' style='margin-left:"
        f"{100 * (a - t0).total_seconds() / total:.1f}%;width:{max(0.5, 100 * (b - a).total_seconds() / total):.1f}%;"
        f"background:{COLOURS.get(st, '#2f7de1')}'></div></td><td>{(b - a).total_seconds() * 1000:.0f} ms</td></tr>"
        for sid, a, b, st in spans
    )
    return f"<table>{rows}</table>"


async def dead_letters(request: Request) -> Response:
    entries = (await ops(request)("dlq.list", limit=500))["dead_letters"]
    rows = "".join(
        f"<tr><td>{e['seq']}</td><td>{_esc(e['task'])}</td><td><a href='/console/runs/{_esc(e['run_id'])}'>"
        f"{_esc(e['run_id'])}</a></td><td>{_esc(e['step_id'])}</td><td>{_esc(e['reason'])}</td>"
        f"<td>{_esc(e['error'])}</td><td>{_button(_replay_path(e), 'Replay')}</td></tr>"
        for e in entries
    )
    head = "<tr><th>Seq</th><th>Task</th><th>Run</th><th>Step</th><th>Reason</th><th>Error</th><th></th></tr>"
    return _page(request, "Dead letters", f"<table>{head}{rows}</table>" if entries else "<p>No dead letters.</p>")


def _replay_path(entry: dict[str, Any]) -> str:
    return f"/console/dead-letters/{entry['seq']}/replay"


async def limits(request: Request) -> Response:
    items = (await ops(request)("limits", prefix="", queue=5))["limits"]
    rows = "".join(f"<tr><td>{_esc(i['key'])}</td><td><pre>{_esc(json.dumps(i))}</pre></td></tr>" for i in items)
    return _page(request, "Limits", f"<table>{rows}</table>" if items else "<p>No limits in use.</p>")


async def triggers(request: Request) -> Response:
    found = await TriggerStore(request.app.state.plane.js).all()
    rows = ""
    for t in found:
        what = msgspec.to_builtins(t.cron or t.webhook or t.subject or t.http)
        what.pop("secret", None)
        if t.debounce is not None:
            what["debounce"] = msgspec.to_builtins(t.debounce)
        toggle = "disable" if t.enabled else "enable"
        rows += (
            f"<tr><td>{_esc(t.id)}</td><td>{_esc(t.workflow)}</td><td>{t.kind} {_esc(json.dumps(what))}</td>"
            f"<td>{'yes' if t.enabled else 'no'}</td><td>{_button(f'/console/triggers/{t.id}/{toggle}', toggle)}"
            f"{_button(f'/console/triggers/{t.id}/fire', 'Fire now')}</td></tr>"
        )
    head = "<tr><th>ID</th><th>Workflow</th><th>Fires on</th><th>Enabled</th><th></th></tr>"
    return _page(request, "Triggers", f"<table>{head}{rows}</table>" if found else "<p>No triggers.</p>")


async def login(request: Request) -> Response:
    if request.method == "POST":
        token = _form(await request.body()).get("token", "")
        response = RedirectResponse("/console/", 303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/console")
        return response
    body = (
        '<form method="post"><label>API token <input type="password" name="token"></label> '
        "<button>Sign in</button></form>"
    )
    return HTMLResponse(
        f"<!doctype html><title>dagnats</title><style>{STYLE}</style><main><h1>Sign in</h1>{body}</main>"
    )


# ---- mutations -----------------------------------------------------------------------------


def _form(data: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True).items()}


Mutation = Callable[[Request, dict[str, str]], Awaitable[str]]


def mutation(act: Mutation) -> Callable[[Request], Awaitable[Response]]:
    """A form POST: CSRF-checked, then ``act``; redirects to the page it names (303)."""

    async def handle(request: Request) -> Response:
        body = await request.body()
        if len(body) > request.app.state.max_body:
            return _error(request, 413, "the form is too large")
        form = _form(body)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not same_secret(form.get("csrf", ""), cookie):
            return _error(request, 403, "the form's CSRF token is missing or wrong: reload the page and try again")
        try:
            target = await act(request, form)
        except DagnatsError as err:
            return _error(request, 400, str(err))
        except json.JSONDecodeError as err:
            return _error(request, 400, f"not valid JSON: {err}")
        return RedirectResponse(target, 303)

    return handle


def _error(request: Request, status: int, message: str) -> Response:
    response = _page(request, "Refused", f"<p class='err' id='error'>{_esc(message)}</p>")
    response.status_code = status
    return response


def _id(request: Request, name: str) -> str:
    return check_identifier(name.replace("_", " "), request.path_params[name])


async def start_run(request: Request, form: dict[str, str]) -> str:
    name = _id(request, "name")
    data = json.loads(form.get("input") or "null")
    started = await ops(request)("run.start", workflow=name, input=data)
    return f"/console/runs/{started['run_id']}"


def _run_action(op: str, **extra: Any) -> Mutation:
    async def act(request: Request, form: dict[str, str]) -> str:
        run_id = _id(request, "run_id")
        fields = {k: (_id(request, v) if v.endswith("_id") else v) for k, v in extra.items()}
        await ops(request)(op, run_id=run_id, **fields)
        return f"/console/runs/{run_id}"

    return act


async def signal(request: Request, form: dict[str, str]) -> str:
    run_id = _id(request, "run_id")
    data = json.loads(form.get("data") or "null")
    await ops(request)("run.signal", run_id=run_id, name=form.get("name", ""), data=data)
    return f"/console/runs/{run_id}"


async def replay(request: Request, form: dict[str, str]) -> str:
    seq = request.path_params["seq"]
    if not seq.isdigit() or len(seq) > 18:
        raise DagnatsError(f"no dead letter {seq!r}")
    await ops(request)("dlq.replay", seq=int(seq), by="console")
    return "/console/dead-letters"


def _trigger_action(kind: str) -> Mutation:
    async def act(request: Request, form: dict[str, str]) -> str:
        store = TriggerStore(request.app.state.plane.js)
        t = await store.get(_id(request, "trigger_id"))
        if kind == "fire":
            started = await ops(request)("run.start", workflow=t.workflow, input=envelope(t, "manual"))
            return f"/console/runs/{quote(started['run_id'])}"
        await store.set_enabled(t.id, kind == "enable")
        return "/console/triggers"

    return act


def _safe(page: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return await page(request)
        except DagnatsError as err:
            status = 404 if isinstance(err, LookupError) else 400
            return _error(request, status, str(err))

    return handle


ROUTES = [
    Route("/console/", _safe(dashboard)),
    Route("/console", lambda r: RedirectResponse("/console/", 308)),
    Route("/console/login", login, methods=["GET", "POST"]),
    Route("/console/workflows", _safe(workflows)),
    Route("/console/workflows/{name}", _safe(workflow)),
    Route("/console/workflows/{name}/start", mutation(start_run), methods=["POST"]),
    Route("/console/runs", _safe(runs)),
    Route("/console/runs/{run_id}", _safe(run_page)),
    Route(
        "/console/runs/{run_id}/cancel",
        mutation(_run_action("run.cancel", reason="cancelled from the console")),
        methods=["POST"],
    ),
    Route("/console/runs/{run_id}/pause", mutation(_run_action("run.pause")), methods=["POST"]),
    Route("/console/runs/{run_id}/resume", mutation(_run_action("run.resume")), methods=["POST"]),
    Route("/console/runs/{run_id}/signal", mutation(signal), methods=["POST"]),
    Route(
        "/console/runs/{run_id}/approve/{step_id}",
        mutation(_run_action("run.approve", step_id="step_id", by="console")),
        methods=["POST"],
    ),
    Route(
        "/console/runs/{run_id}/reject/{step_id}",
        mutation(_run_action("run.reject", step_id="step_id", by="console")),
        methods=["POST"],
    ),
    Route("/console/dead-letters", _safe(dead_letters)),
    Route("/console/dead-letters/{seq}/replay", mutation(replay), methods=["POST"]),
    Route("/console/limits", _safe(limits)),
    Route("/console/triggers", _safe(triggers)),
    *(
        Route(f"/console/triggers/{{trigger_id}}/{kind}", mutation(_trigger_action(kind)), methods=["POST"])
        for kind in ("enable", "disable", "fire")
    ),
]
