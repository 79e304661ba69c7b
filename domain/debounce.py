"""Debounce: a burst of trigger fires becomes one run, started once the burst goes quiet.

Theory of operation: each fire of a debounced trigger is folded into the
``Burst`` of its key (the value at ``debounce.key`` in the fire's data; one
burst per trigger without a key). A burst is due ``period`` after its last
fire, or ``timeout`` after its first if that comes sooner; the run it
starts gets the last fire's data. Bursts are plain values: the shell keeps
them in a KV bucket, updates them with compare-and-set and names the run a
burst starts after the burst's revision (``burst_run_id``), so two engines
that fire the same burst start the same run.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import msgspec

from .events import format_timestamp, parse_timestamp
from .paths import PathNotFound, extract_dot_path
from .triggers import Debounce

NO_KEY = "all"


class Burst(msgspec.Struct, frozen=True):
    trigger_id: str
    first_at: str
    last_at: str
    fires: int = 0
    data: Any = None  # the last fire's


def key_value(debounce: Debounce, data: Any) -> Any:
    """What separates bursts: the value at ``debounce.key`` (None if absent or no key)."""
    if not debounce.key:
        return None
    try:
        return extract_dot_path(data, debounce.key)
    except PathNotFound:
        return None


def burst_key(trigger_id: str, debounce: Debounce, data: Any) -> str:
    """The KV key of the burst this fire belongs to (any key value is safe in it)."""
    value = key_value(debounce, data)
    if value is None:
        return f"{trigger_id}.{NO_KEY}"
    digest = hashlib.sha256(msgspec.json.encode(value)).hexdigest()[:24]
    return f"{trigger_id}.{digest}"


def add_fire(burst: Burst | None, trigger_id: str, data: Any, now: datetime) -> Burst:
    """``burst`` with one more fire at ``now`` (a new burst if there is none)."""
    stamp = format_timestamp(now)
    if burst is None:
        return Burst(trigger_id, first_at=stamp, last_at=stamp, fires=1, data=data)
    return msgspec.structs.replace(burst, last_at=stamp, fires=burst.fires + 1, data=data)


def due_at(burst: Burst, debounce: Debounce) -> datetime:
    quiet = parse_timestamp(burst.last_at) + _span(int(debounce.period))
    if not int(debounce.timeout):
        return quiet
    return min(quiet, parse_timestamp(burst.first_at) + _span(int(debounce.timeout)))


def is_due(burst: Burst, debounce: Debounce, now: datetime) -> bool:
    return due_at(burst, debounce) <= now


def burst_run_id(key: str, revision: int) -> str:
    """The one run of a burst as it stood at ``revision``: the same in every engine."""
    return hashlib.sha256(f"debounce.{key}.{revision}".encode()).hexdigest()[:32]


def _span(ns: int) -> timedelta:
    return timedelta(microseconds=ns // 1000)
