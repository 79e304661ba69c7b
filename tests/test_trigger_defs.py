"""Trigger definitions (domain/triggers.py) and debounce bursts (domain/debounce.py), without NATS."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dagnats.domain.debounce import add_fire, burst_key, burst_run_id, due_at, is_due
from dagnats.domain.durations import SECOND
from dagnats.domain.errors import DefinitionDecodeError, InvalidRequest, WorkflowInvalid
from dagnats.domain.triggers import (
    MAX_ROUTE_SEGMENTS,
    Cron,
    Debounce,
    HttpRoute,
    Trigger,
    Webhook,
    check_trigger,
    declared_triggers,
    route_conflicts,
)
from dagnats.domain.validate import parse_and_validate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def workflow(*triggers: dict) -> bytes:
    return json.dumps({"name": "orders", "steps": [{"id": "a", "task": "ta"}], "triggers": list(triggers)}).encode()


def issues_of(*triggers: dict) -> str:
    with pytest.raises(WorkflowInvalid) as info:
        parse_and_validate(workflow(*triggers))
    return str(info.value)


def test_declared_triggers_take_the_workflow_name_and_keep_their_kind():
    wf = parse_and_validate(
        workflow(
            {"id": "nightly", "cron": {"expression": "0 3 * * *", "timezone": "Europe/Paris"}},
            {"id": "api", "workflow_id": "orders", "http": {"path": "/api/orders/new", "method": "POST"}},
            {"id": "push", "webhook": {"path": "/hooks/push"}, "debounce": {"period": "30s", "key": "repo.id"}},
        )
    )
    stored = declared_triggers(wf.name, wf.triggers)
    assert [(t.id, t.workflow, t.kind, t.declared) for t in stored] == [
        ("nightly", "orders", "cron", True),
        ("api", "orders", "http", True),
        ("push", "orders", "webhook", True),
    ]
    assert stored[1].http == HttpRoute("/api/orders/new", "POST", 30_000, 1 << 20)
    assert stored[2].debounce is not None and stored[2].debounce.period == 30 * SECOND


@pytest.mark.parametrize(
    ("trigger", "named"),
    [
        ({"id": "t", "workflow_id": "other", "subject": {"subject": "orders.new"}}, 'workflow_id: "other"'),
        ({"id": "t"}, "exactly one of cron, webhook, subject, http (got 0)"),
        ({"id": "t", "cron": {"expression": "* * * * *"}, "subject": {"subject": "a"}}, "(got 2)"),
        ({"id": "t", "cron": {"expression": "* * * * * *"}}, "cron:"),
        ({"id": "t", "cron": {"expression": "* * * * *"}, "debounce": {"period": "1s"}}, "debounce: not allowed"),
        ({"id": "t", "http": {"path": "/api/x"}, "debounce": {"period": "1s"}}, "debounce: not allowed"),
        ({"id": "t", "subject": {"subject": "a"}, "debounce": {"period": "200h"}}, "debounce.period"),
        ({"id": "t", "subject": {"subject": "a"}, "debounce": {"period": "2s", "timeout": "1s"}}, "debounce.timeout"),
        ({"id": "t", "subject": {"subject": "a"}, "debounce": {"period": "2s", "key": "a..b"}}, "debounce.key"),
        ({"id": "t", "http": {"path": "/api/*"}}, "http.path"),
        ({"id": "t", "http": {"path": "/api/a/../b"}}, "http.path"),
        ({"id": "t", "http": {"path": "/api/%2e%2e"}}, "http.path"),
        ({"id": "t", "http": {"path": "/api"}}, "http.path"),
        ({"id": "t", "http": {"path": "/hooks/x"}}, "http.path"),
        ({"id": "t", "http": {"path": "/api/x", "method": "TRACE"}}, 'http.method: "TRACE" is not allowed'),
        ({"id": "t", "http": {"path": "/api/x", "timeout_ms": 0}}, "http.timeout_ms"),
        ({"id": "t", "http": {"path": "/api/x", "max_body_bytes": 0}}, "http.max_body_bytes"),
        ({"id": "t", "http": {"path": "/api/x", "secret": "short"}}, "http.secret: must be at least 16"),
        ({"id": "t", "http": {"path": "/api/x", "idempotency_header": "X Key"}}, "http.idempotency_header"),
        ({"id": "t", "webhook": {"path": "/hooks/a/b"}}, "webhook.path"),
        ({"id": "t", "subject": {"subject": "history.>"}}, "subject:"),
        ({"id": "t.x", "subject": {"subject": "a"}}, 'id: "t.x"'),
    ],
)
def test_a_bad_trigger_is_named_with_what_is_wrong(trigger, named):
    assert named in issues_of(trigger)


def test_two_declared_triggers_on_one_route_or_one_id_are_refused():
    route = {"path": "/api/orders", "method": "POST"}
    assert 'route conflict: POST /api/orders already registered by trigger "a"' in issues_of(
        {"id": "a", "http": route}, {"id": "b", "http": route}
    )
    assert '"a" is declared more than once' in issues_of({"id": "a", "http": route}, {"id": "a", "http": route})
    # Another method on the same path is another route.
    parse_and_validate(workflow({"id": "a", "http": route}, {"id": "b", "http": {**route, "method": "GET"}}))


def test_an_unknown_field_in_a_trigger_is_named():
    with pytest.raises(DefinitionDecodeError, match="pathh"):
        parse_and_validate(workflow({"id": "a", "http": {"pathh": "/api/x"}}))


def test_a_singular_trigger_key_is_pointed_at_the_triggers_array():
    doc = {"name": "w", "steps": [{"id": "a", "task": "ta"}], "trigger": {"id": "t"}}
    with pytest.raises(DefinitionDecodeError, match='triggers go in a "triggers" array'):
        parse_and_validate(json.dumps(doc))


def test_route_conflicts_spare_the_same_trigger_id():
    hook = Trigger("a", "w", webhook=Webhook("/hooks/x"))
    assert route_conflicts([hook], [hook]) == []
    other = Trigger("b", "w", webhook=Webhook("/hooks/x"))
    assert route_conflicts([other], [hook]) == ['route conflict: POST /hooks/x already registered by trigger "a"']


def test_check_trigger_lists_every_problem_at_once():
    with pytest.raises(InvalidRequest) as info:
        check_trigger(Trigger("bad id", "w", cron=Cron("nope"), webhook=Webhook("/x")))
    text = str(info.value)
    assert all(part in text for part in ("id:", "exactly one", "cron:", "webhook.path"))


segments = st.text(alphabet=st.sampled_from("aZ09_-.*>%/ ~"), min_size=1, max_size=12)


@given(st.lists(segments, min_size=1, max_size=4))
@example(["0/0/0", "0/0/0", "0/0/0"])  # nine identifier segments: one too many
def test_an_accepted_http_route_has_only_identifier_segments(parts):
    path = "/api/" + "/".join(parts)
    accepted = not list(check_http_issues(path))
    route = path.split("/")[2:]
    safe = len(route) <= MAX_ROUTE_SEGMENTS and all(
        p and len(p) <= 64 and all(c.isalnum() or c in "_-" for c in p) for p in route
    )
    assert accepted == safe


def check_http_issues(path: str):
    from dagnats.domain.triggers import trigger_issues

    return trigger_issues(Trigger("t", "w", http=HttpRoute(path)))


# ---- debounce ------------------------------------------------------------------------------

QUIET = Debounce(period=10 * SECOND, timeout=60 * SECOND, key="repo")


def test_a_burst_is_due_a_period_after_its_last_fire_or_at_its_timeout():
    burst = add_fire(None, "t", {"n": 1}, T0)
    assert due_at(burst, QUIET) == T0 + timedelta(seconds=10)
    for second in range(5, 100, 5):  # a fire every 5 s keeps it quiet-less
        burst = add_fire(burst, "t", {"n": second}, T0 + timedelta(seconds=second))
    assert due_at(burst, QUIET) == T0 + timedelta(seconds=60)
    assert burst.fires == 20 and burst.data == {"n": 95}
    assert not is_due(burst, Debounce(period=10 * SECOND), T0 + timedelta(seconds=104))
    assert is_due(burst, Debounce(period=10 * SECOND), T0 + timedelta(seconds=105))


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=20), st.integers(1, 100))
def test_a_burst_is_never_due_before_its_quiet_period_nor_after_its_timeout(gaps, period):
    debounce = Debounce(period=period * SECOND, timeout=5 * period * SECOND)
    burst, now = None, T0
    for gap in gaps:
        now += timedelta(seconds=gap)
        burst = add_fire(burst, "t", gap, now)
    assert burst is not None
    due = due_at(burst, debounce)
    first = T0 + timedelta(seconds=gaps[0])
    assert due <= now + timedelta(seconds=period) and due <= first + timedelta(seconds=5 * period)


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers(), max_size=3)))
def test_burst_keys_are_kv_safe_and_separate_key_values(value):
    key = burst_key("push", QUIET, {"repo": value})
    assert key.startswith("push.") and all(c.isalnum() or c in "._-" for c in key)
    assert key != burst_key("push", QUIET, {"repo": [value, "other"]})


def test_two_engines_name_the_same_run_for_the_same_burst_revision():
    assert burst_run_id("push.all", 7) == burst_run_id("push.all", 7) != burst_run_id("push.all", 8)
