"""Handing a fact straight to its run's owner (`dagnats.handoff.<partition>`, request/reply)
instead of storing it in the run's inbox first: see ``engine.handoff``."""

from __future__ import annotations

import logging
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError

from dagnats.domain.events import STEP_COMPLETED, STEP_FAILED, WORKFLOW_STARTED

from .headers import TRACEPARENT

log = logging.getLogger("dagnats.handoff")

STORED = b'{"stored":true}'
NOT_STORED = b'{"stored":false}'
# A start handed over for a run whose history already held a start: nothing was stored
# (the caller reads the run's first start to tell the same start from a conflicting one).
REPEATED = b'{"stored":false,"repeated":true}'
# No answer in time (never on the wire): an owner that is there may still store the fact.
LATE = b'{"stored":null}'
# Seconds the run's owner has to record a fact handed to it. A request in flight to an
# engine killed with -9 is never answered: the worker's slot waits this long before the
# inbox takes the result, so it bounds how long a kill stalls the runs it was handed
# (bench/recovery.py: 10 s gave every run moving again 15.8 s after a kill, 3 s 5.7 s,
# 2 s 4.4 and 5.7 s). A slower answer costs one more inbox write of a fact folded once.
HANDOFF_TIMEOUT = 2.0
# An attempt's result, as a worker reports it: what a worker hands over (else stores in the inbox).
RESULT_FACTS = frozenset({STEP_COMPLETED, STEP_FAILED})
# What the run's owner takes by handoff: results, and start requests.
HANDED = RESULT_FACTS | {WORKFLOW_STARTED}


async def hand_over(
    nc: Any, subject: str, body: bytes, trace_parent: str = "", timeout: float = HANDOFF_TIMEOUT
) -> bool:
    """True once the run's owner says the fact is in the run's history; False when no
    owner answered, or not in time, or it would not take it (the caller then uses the inbox)."""
    return await ask_owner(nc, subject, body, trace_parent, timeout) == STORED


async def ask_owner(
    nc: Any, subject: str, body: bytes, trace_parent: str = "", timeout: float = HANDOFF_TIMEOUT
) -> bytes:
    """The owner's answer to a handed fact: STORED, REPEATED (a start, for a run already
    started), NOT_STORED (also when no owner answered), or LATE (not in time: an owner
    busy or gone, which may store it yet)."""
    headers = {TRACEPARENT: trace_parent} if trace_parent else None
    try:
        reply = await nc.request(subject, body, timeout=timeout, headers=headers)
    except NatsTimeoutError:
        log.debug("handoff on %s: no answer in %gs", subject, timeout)
        return LATE
    except Exception as err:  # noqa: BLE001 - no owner now, or a slow one: the inbox takes it
        log.debug("handoff on %s: %s", subject, err)
        return NOT_STORED
    return reply.data if reply.data in (STORED, REPEATED) else NOT_STORED
