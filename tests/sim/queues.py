"""A JetStream work queue on the fake clock: RUN_INBOX and TASK_QUEUES in the simulation.

What it keeps of the real thing (RELIABILITY.md §2.4): a publish carrying a
``Nats-Msg-Id`` already stored within the dedup window stores nothing (even if the
first copy was acked and removed); a fetched message is held by one consumer until
it is acked, NAKed (back after the delay) or its ``ack_wait`` lapses (back at once,
counted as an expiry); an ack removes the message. A delivery is identified by a
token; whether an ack from an old delivery (the message went to someone else
since) still removes it is a per-seed choice, both are plausible readings of the
server and the engine must be safe under either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Message:
    seq: int
    key: str  # the run id: which partition the message belongs to
    subject: str  # inbox: the run id; tasks: the task name
    body: Any
    msg_id: str
    available_at: float = 0.0
    holder: tuple[str, int] | None = None  # (consumer, delivery number) while held
    deadline: float = 0.0
    deliveries: int = 0


class WorkQueue:
    def __init__(self, now: Callable[[], float], ack_wait: float, dedup_window: float, honor_stale_acks: bool) -> None:
        self.now, self.ack_wait, self.dedup_window = now, ack_wait, dedup_window
        self.honor_stale_acks = honor_stale_acks
        self.messages: dict[int, Message] = {}
        self.ids: dict[str, float] = {}
        self.seq = 0
        self.expired: list[Message] = []  # every ack_wait expiry, in order

    def publish(self, key: str, subject: str, body: Any, msg_id: str = "", delay: float = 0.0) -> Message | None:
        """Store a message; None if ``msg_id`` was stored within the dedup window."""
        now = self.now()
        if msg_id:
            stored_at = self.ids.get(msg_id)
            if stored_at is not None and now - stored_at < self.dedup_window:
                return None
            self.ids[msg_id] = now
        self.seq += 1
        message = Message(self.seq, key, subject, body, msg_id, available_at=now + delay)
        self.messages[self.seq] = message
        return message

    def available(self, accept: Callable[[Message], bool]) -> list[Message]:
        now = self.now()
        return [m for m in self.messages.values() if m.holder is None and m.available_at <= now and accept(m)]

    def fetch(self, consumer: str, accept: Callable[[Message], bool], most: int) -> list[Message]:
        taken = self.available(accept)[:most]
        for message in taken:
            message.deliveries += 1
            message.holder = (consumer, message.deliveries)
            message.deadline = self.now() + self.ack_wait
        return taken

    def _current(self, message: Message, token: tuple[str, int]) -> bool:
        return message.seq in self.messages and message.holder == token

    def ack(self, message: Message, token: tuple[str, int]) -> None:
        if self._current(message, token) or (self.honor_stale_acks and message.seq in self.messages):
            del self.messages[message.seq]

    def nak(self, message: Message, token: tuple[str, int], delay: float) -> None:
        if self._current(message, token):
            message.holder, message.available_at = None, self.now() + delay

    def delete(self, message: Message) -> None:
        self.messages.pop(message.seq, None)

    def expire(self) -> None:
        """Messages held past their ack_wait become available again."""
        now = self.now()
        for message in self.messages.values():
            if message.holder is not None and message.deadline <= now:
                message.holder, message.available_at = None, now
                self.expired.append(message)

    def next_change(self) -> float | None:
        """When the next held message lapses or a delayed one becomes available."""
        now = self.now()
        times = [m.deadline for m in self.messages.values() if m.holder is not None]
        times += [m.available_at for m in self.messages.values() if m.holder is None and m.available_at > now]
        return min(times) if times else None
