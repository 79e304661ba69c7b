"""Idempotent HTTP trigger calls: one run per (trigger, idempotency header value), its answer replayed.

KV ``http_idempotency`` (entries live one hour):

- ``claim.<trigger>.<digest>`` holds the run id, written with Create: the
  first caller wins, a repeat (or a concurrent twin) finds the run id there;
- ``result.<run>`` holds the answer that run gave (``StoredAnswer``), so a
  repeat gets the same status, headers and body without starting anything.
  A repeat that finds no result yet reads the run itself (request_triggers.py).

The header's value is hashed into the key: any value is safe, none reaches a
subject as typed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from ..engine.streams import BUCKET_TTL
from ..wire.names import HTTP_IDEMPOTENCY_BUCKET


class StoredAnswer(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    content_type: str
    body: str  # base64


class Claims:
    def __init__(self, js: Any) -> None:
        self.js = js
        self._kv: Any = None

    async def kv(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(HTTP_IDEMPOTENCY_BUCKET)
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(
                    bucket=HTTP_IDEMPOTENCY_BUCKET, history=1, ttl=BUCKET_TTL[HTTP_IDEMPOTENCY_BUCKET]
                )
        return self._kv

    @staticmethod
    def claim_key(trigger_id: str, value: str) -> str:
        return f"claim.{trigger_id}.{hashlib.sha256(value.encode()).hexdigest()[:32]}"

    async def claim(self, trigger_id: str, value: str, run_id: str) -> str | None:
        """None if ``run_id`` now holds the claim, else the run id that already did."""
        kv, key = await self.kv(), self.claim_key(trigger_id, value)
        try:
            await kv.create(key, run_id.encode())
            return None
        except KeyWrongLastSequenceError:
            entry = await kv.get(key)
            return (entry.value or b"").decode()

    async def point(self, trigger_id: str, value: str, run_id: str) -> None:
        """The claim's call was answered by another run (a workflow's own idempotency_key)."""
        await (await self.kv()).put(self.claim_key(trigger_id, value), run_id.encode())

    async def release(self, trigger_id: str, value: str) -> None:
        """The claimed run never started: a repeat may try again."""
        await (await self.kv()).delete(self.claim_key(trigger_id, value))

    async def keep(self, run_id: str, answer: StoredAnswer) -> None:
        await (await self.kv()).put(f"result.{run_id}", msgspec.json.encode(answer))

    async def stored(self, run_id: str) -> StoredAnswer | None:
        try:
            entry = await (await self.kv()).get(f"result.{run_id}")
        except (KeyNotFoundError, NotFoundError):
            return None
        return msgspec.json.decode(entry.value or b"", type=StoredAnswer)
