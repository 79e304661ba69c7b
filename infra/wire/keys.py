"""KV keys of the per-run buckets the control plane and the worker SDK share.

Like subjects, every token is a checked identifier: a ``*`` or ``>`` in a key
would watch or purge other runs' entries.
"""

from __future__ import annotations

from dagnats.domain.identifiers import check_identifier


def signal_key(run_id: str, name: str) -> str:
    """`<run>.<name>` in the signals bucket: the latest unconsumed signal of that name."""
    return f"{check_identifier('run id', run_id)}.{check_identifier('signal name', name)}"


def checkpoint_key(run_id: str, step_id: str, instance: int | None = None) -> str:
    """`<run>.<step>` in the checkpoints bucket (`<run>.<step>.<index>` for one
    element of a map step, whose instances run side by side)."""
    key = f"{check_identifier('run id', run_id)}.{check_identifier('step id', step_id)}"
    return key if instance is None else f"{key}.{int(instance)}"
