"""Capabilities: what a step requires of the worker that runs it.

A step's ``required_capabilities`` (``["cuda", "fast"]``) go only to a worker
that offers every one of them (``Worker(capabilities={...})``). The routing is
done by subject, not by workers turning tasks down: a step that requires a
set is published with the set's *token* as one more subject token, and only
workers offering the set consume that subject. The token is a pure function
of the set — ``c`` and 16 hex digits of a SHA-256 over the sorted, distinct
names — so the engine and every worker compute it alone, and the same set
written in another order or with a name twice is the same set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .definition import WorkflowDef

TOKEN_PREFIX = "c"
TOKEN_HEX_DIGITS = 16  # 64 bits: two sets of one task sharing a token is not a practical risk
MAX_CAPABILITIES = 32  # per step, and so per token


def capability_set(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct ``names``, sorted: the one spelling of a set."""
    return tuple(sorted(set(names)))


def capability_token(names: Iterable[str]) -> str:
    """The subject token of the set (``c1f0e...``), or "" for no capabilities."""
    canonical = capability_set(names)
    if not canonical:
        return ""
    digest = hashlib.sha256(",".join(canonical).encode()).hexdigest()
    return TOKEN_PREFIX + digest[:TOKEN_HEX_DIGITS]


def offers(offered: Iterable[str], required: Iterable[str]) -> bool:
    """Whether a worker offering ``offered`` may run a step requiring ``required``."""
    return set(required) <= set(offered)


def describe_capabilities(names: Iterable[str]) -> str:
    """``[cuda, fast]``: a set as people read it, in its canonical order."""
    return "[" + ", ".join(capability_set(names)) + "]"


Route = tuple[str, str, tuple[str, ...]]


def capability_routes(
    wf: WorkflowDef, tasks: Iterable[str], groups: Iterable[str], offered: Iterable[str]
) -> set[Route]:
    """(task, worker group or "", capability set) of every step of ``wf`` requiring
    capabilities that a worker with these tasks, groups (none: it takes only the tasks
    of no group) and ``offered`` capabilities may run: the subjects it must consume."""
    handled, in_groups, has = set(tasks), set(groups), set(offered)
    return {
        (step.task, step.worker_group, capability_set(step.required_capabilities))
        for step in wf.steps
        if step.required_capabilities
        and step.task in handled
        and (step.worker_group in in_groups if in_groups else not step.worker_group)
        and offers(has, step.required_capabilities)
    }
