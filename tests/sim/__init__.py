"""DST-lite: a seeded, single-threaded simulation of several engines sharing one NATS.

``world`` models what the engines rely on from JetStream (conditional appends, dedup
windows, work queues with ack_wait, late schedules, leases) on a fake clock;
``engine`` runs the real RunDirectory, RunActor and TimerActor code on it, one
message at a time; ``workers`` executes tasks; ``scheduler`` interleaves all of it
from one ``random.Random(seed)`` and injects faults; ``invariants`` checks
DESIGN.md's invariants on what is left. See docs/operations.md.
"""
