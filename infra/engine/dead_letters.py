"""Dead letters: tasks that failed for good, or that no worker ever finished, kept for an operator.

Theory of operation. An entry lands in DEAD_LETTERS on ``dead.<task>.<run>.<step>``
with the task message as its body and ``Dagnats-Dlq-*`` headers saying why:

- ``max_deliveries``: workers took the task ``max_deliveries`` times and never
  settled it (the worker process died on it, or hung past its ack wait). The
  server then leaves it in the work queue for good and says so with a
  ``MAX_DELIVERIES`` advisory; the ``DeadLetterMover`` of every engine hears it,
  copies the task here, reports a ``step.failed`` to the run (so its retry
  policy and failure branch apply) and deletes the task from TASK_QUEUES.
- ``non_retriable`` / ``failed``: the run's decision when a worker's step
  failed for good and failed the run (``domain.actions.DeadLetter``).

Every write is keyed ``dlq:<run>:<step>:<attempt>``, so several engines moving
the same task, or a decision taken twice, store one entry per attempt.

``DeadLetters`` serves the control plane: list, show, discard, and replay,
which asks the run's state whether the step may be taken up again
(``domain.replays``) and then puts a ``step.replayed`` fact in the run's inbox:
the run starts the step's next attempt itself, under a new task message id.
The entry stays until the replayed step completes (the run then discards its
step's dead letters) or an operator discards it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from dagnats.domain import events as ev
from dagnats.domain.actions import DeadLetter, DiscardDeadLetters
from dagnats.domain.errors import DeadLetterNotFound, InvalidRequest, ReplayRefused, RunNotFound
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.replays import replay_problem
from dagnats.domain.run_context import run_context

from ..wire import headers as h
from ..wire.facts import publish_fact
from ..wire.names import DEAD_LETTER_STREAM, TASK_STREAM
from ..wire.reading import stored_batches
from ..wire.subjects import dead_letter_subject, dead_letters_filter, task_subject
from .reader import RunReader

log = logging.getLogger("dagnats.dlq")

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
MAX_HEADER_ERROR = 1024  # characters of the error kept in a header (the body has the task)
MSG_DELETE_FAILED = 10057  # "no message found" on a delete (someone else deleted it)
_ENCODER = msgspec.json.Encoder()

REASON_MAX_DELIVERIES = "max_deliveries"


def dead_letter_id(payload: ev.TaskPayload) -> str:
    index = f":i{payload.instance}" if payload.instance is not None else ""
    return f"dlq:{payload.run_id}:{payload.step_id}{index}:{payload.attempt}"


async def publish_dead_letter(
    js: JetStreamContext,
    payload: ev.TaskPayload,
    *,
    task: str,
    queued_on: str,
    reason: str,
    error: str,
    deliveries: int = 0,
    body: bytes | None = None,
) -> None:
    """Keep ``payload`` (the task as queued on ``queued_on``) as a dead letter."""
    headers = {
        h.MSG_ID: dead_letter_id(payload),
        h.DLQ_RUN_ID: payload.run_id,
        h.DLQ_STEP_ID: payload.step_id,
        h.DLQ_TASK: task,
        h.DLQ_WORKFLOW: payload.workflow_name,
        h.DLQ_REASON: reason,
        h.DLQ_ERROR: " ".join(error.split())[:MAX_HEADER_ERROR],
        h.DLQ_ATTEMPTS: str(payload.attempt),
        h.DLQ_TASK_SUBJECT: queued_on,
    }
    if deliveries:
        headers[h.DLQ_DELIVERY_COUNT] = str(deliveries)
    subject = dead_letter_subject(task, payload.run_id, payload.step_id)
    data = body if body is not None else _ENCODER.encode(payload)
    await js.publish(subject, data, stream=DEAD_LETTER_STREAM, headers=headers)


async def record_dead_letter(js: JetStreamContext, action: DeadLetter) -> None:
    """What a run's ``DeadLetter`` action asks (its outbox calls this)."""
    p = action.payload
    queued_on = task_subject(action.task, p.run_id, action.group or None, action.capabilities)
    await publish_dead_letter(js, p, task=action.task, queued_on=queued_on, reason=action.reason, error=action.error)


async def discard_dead_letters(js: JetStreamContext, action: DiscardDeadLetters) -> None:
    """A replayed step completed: its dead letters go."""
    await js.purge_stream(DEAD_LETTER_STREAM, subject=dead_letters_filter(action.run_id, action.step_id))


# ---- moving tasks out of the work queue ---------------------------------------------------


class DeadLetterMover:
    """Moves each task that exhausted its deliveries from TASK_QUEUES to DEAD_LETTERS."""

    def __init__(self, nc: NATS) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self._moving: set[asyncio.Task[bool]] = set()
        self._sub: Any = None

    async def start(self) -> None:
        # Every engine listens (no queue group): an advisory is sent once, and the
        # engine that hears it may be on its way down. Moving twice stores nothing twice.
        self._sub = await self.nc.subscribe(f"{MAX_DELIVERIES_ADVISORY}.{TASK_STREAM}.*", cb=self._heard)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as err:  # noqa: BLE001 - shutting down: the connection may be gone
                log.debug("ignored during shutdown: %s", err)
        if self._moving:
            await asyncio.wait(self._moving, timeout=5)

    async def _heard(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries") or 0)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a max-deliveries advisory that does not parse: %s", err)
            return
        task = asyncio.create_task(self.move(seq, deliveries))
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def move(self, seq: int, deliveries: int) -> bool:
        """Dead-letter task ``seq``, tell its run, take it out of the queue; False if it is gone."""
        try:
            stored = await self.js.get_msg(TASK_STREAM, seq)
        except NotFoundError:
            return False  # moved by another engine, or acked after all
        try:
            payload = ev.TASK_DECODER.decode(stored.data or b"")
            task = (stored.subject or "").split(".")[1]
            check_identifier("run id", payload.run_id)
            check_identifier("step id", payload.step_id)
        except (msgspec.DecodeError, ValueError, IndexError) as err:
            log.warning("deleting malformed task %d on %s (deliveries exhausted): %s", seq, stored.subject, err)
            await self._delete(seq)
            return True
        error = f"task delivered {deliveries} times without a result (max_deliveries); a worker may crash on it"
        await publish_dead_letter(
            self.js,
            payload,
            task=task,
            queued_on=stored.subject or "",
            reason=REASON_MAX_DELIVERIES,
            error=error,
            deliveries=deliveries,
            body=stored.data,
        )
        await publish_fact(self.js, _exhausted(payload, error))
        await self._delete(seq)
        p = payload
        with run_context(p.run_id, p.step_id, p.traceparent):
            log.warning("run %s: step %s attempt %d dead-lettered: %s", p.run_id, p.step_id, p.attempt, error)
        return True

    async def _delete(self, seq: int) -> None:
        try:
            await self.js.delete_msg(TASK_STREAM, seq)
        except NotFoundError:
            pass
        except APIError as err:
            if err.err_code != MSG_DELETE_FAILED:
                raise


def _exhausted(payload: ev.TaskPayload, error: str) -> ev.StepFailed:
    """The run's news: the attempt failed (retriable: the step's retry policy decides)."""
    return ev.StepFailed(
        run_id=payload.run_id,
        step_id=payload.step_id,
        attempt=payload.attempt,
        instance=payload.instance,
        timestamp=ev.format_timestamp(datetime.now(UTC)),
        trace_parent=payload.traceparent,
        id=ev.fact_id("deliveries_exhausted", payload.step_id, payload.attempt, payload.instance),
        payload=ev.Failure(error=error, failure_type=ev.FailureType.TRANSIENT.value),
    )


# ---- the operator's view ---------------------------------------------------------------------


def entry_view(msg: RawStreamMsg, with_body: bool = False) -> dict[str, Any]:
    """One dead letter as the API shows it."""
    hdrs = msg.headers or {}
    view: dict[str, Any] = {
        "seq": msg.seq,
        "subject": msg.subject,
        "task": hdrs.get(h.DLQ_TASK, ""),
        "run_id": hdrs.get(h.DLQ_RUN_ID, ""),
        "step_id": hdrs.get(h.DLQ_STEP_ID, ""),
        "workflow": hdrs.get(h.DLQ_WORKFLOW, ""),
        "reason": hdrs.get(h.DLQ_REASON, ""),
        "error": hdrs.get(h.DLQ_ERROR, ""),
        "attempts": _int(hdrs.get(h.DLQ_ATTEMPTS)),
        "deliveries": _int(hdrs.get(h.DLQ_DELIVERY_COUNT)),
        "task_subject": hdrs.get(h.DLQ_TASK_SUBJECT, ""),
        "time": hdrs.get(h.STORED_AT, ""),
    }
    if with_body:
        try:
            view["body"] = msgspec.json.decode(msg.data or b"null")
        except msgspec.DecodeError:
            view["body"] = (msg.data or b"").decode(errors="replace")
    return view


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


class DeadLetters:
    """The control plane's dead-letter operations."""

    def __init__(self, js: JetStreamContext, reader: RunReader) -> None:
        self.js, self.reader = js, reader

    async def entries(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Entries oldest first, at most ``limit``, filtered by run, workflow and stored time."""
        start, end = _instant(since, "since"), _instant(until, "until")
        if workflow is not None:
            check_identifier("workflow name", workflow)
        found: list[dict[str, Any]] = []
        async for msg in stored_batches(self.js, DEAD_LETTER_STREAM, dead_letters_filter(run_id), since=start):
            view = entry_view(msg)
            if workflow is not None and view["workflow"] != workflow:
                continue
            if end is not None and view["time"] and ev.parse_timestamp(view["time"]) > end:
                break
            found.append(view)
            if len(found) >= limit:
                break
        return found

    async def show(self, seq: int) -> dict[str, Any]:
        return entry_view(await self._get(seq), with_body=True)

    async def discard(self, seq: int) -> dict[str, Any]:
        await self._get(seq)
        try:
            await self.js.delete_msg(DEAD_LETTER_STREAM, seq)
        except (NotFoundError, APIError) as err:
            if isinstance(err, APIError) and not isinstance(err, NotFoundError) and err.err_code != MSG_DELETE_FAILED:
                raise
            raise DeadLetterNotFound(seq) from None
        return {"seq": seq, "discarded": True}

    async def replay(self, seq: int, by: str = "") -> dict[str, Any]:
        """Have the run take the entry's step up again (refused with the reason if it cannot)."""
        entry = entry_view(await self._get(seq))
        run_id, step_id = entry["run_id"], entry["step_id"]
        try:
            run = await self.reader.get(run_id)
        except RunNotFound:
            raise ReplayRefused(seq, run_id, step_id, f"run {run_id} no longer exists") from None
        problem = replay_problem(run, step_id)
        if problem:
            raise ReplayRefused(seq, run_id, step_id, problem)
        attempt = run.step(step_id).attempts
        fact = ev.StepReplayed(
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
            timestamp=ev.format_timestamp(datetime.now(UTC)),
            trace_parent=run.trace_parent,
            id=ev.fact_id(ev.STEP_REPLAYED, step_id, attempt),
            payload=ev.Replay(by=by, dead_letter_seq=seq),
        )
        await publish_fact(self.js, fact)
        return {"seq": seq, "run_id": run_id, "step_id": step_id, "replayed": True, "attempt": attempt + 1}

    async def replay_many(self, entries: list[dict[str, Any]], by: str = "") -> dict[str, Any]:
        """Replay each (run, step) of ``entries`` once; what was replayed and what was refused why."""
        replayed, refused, seen = [], [], set()
        for entry in entries:
            key = (entry["run_id"], entry["step_id"])
            if key in seen:
                continue
            seen.add(key)
            try:
                replayed.append(await self.replay(entry["seq"], by))
            except (ReplayRefused, DeadLetterNotFound) as err:
                refused.append({"seq": entry["seq"], "run_id": key[0], "step_id": key[1], "reason": str(err)})
        return {"replayed": replayed, "refused": refused}

    async def _get(self, seq: int) -> RawStreamMsg:
        if seq < 1:
            raise InvalidRequest("dlq", f"a dead letter's sequence is a positive number, not {seq}")
        try:
            return await self.js.get_msg(DEAD_LETTER_STREAM, seq, direct=True)
        except NotFoundError:
            raise DeadLetterNotFound(seq) from None


def _instant(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        return ev.parse_timestamp(text)
    except ValueError:
        raise InvalidRequest("dlq", f"{what}: not an RFC3339 instant: {text!r}") from None
