"""JSON Schema for a Python type: the input and output schemas of a workflow.

``msgspec.json.schema`` describes msgspec Structs, dataclasses, TypedDicts,
NamedTuples and plain types (``str``, ``list[int]``, ``dict[str, float]``,
unions, ...). For a named type it answers ``{"$ref": "#/$defs/T", "$defs":
{...}}``; ``schema_for`` lifts ``T`` to the root so the schema reads as the
type itself, keeps in ``$defs`` only what is still referenced (recursive and
nested types), and names the draft, so any JSON Schema validator reads it the
same way.
"""

from __future__ import annotations

from typing import Any

import msgspec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_DEFS_PREFIX = "#/$defs/"


def schema_for(tp: Any) -> dict[str, Any]:
    """A self-contained JSON Schema (draft 2020-12) that accepts the JSON form of ``tp``.

    Raises TypeError when msgspec cannot describe ``tp``.
    """
    raw = msgspec.json.schema(tp)
    defs: dict[str, Any] = raw.pop("$defs", {})
    root = raw
    if set(raw) == {"$ref"} and raw["$ref"].startswith(_DEFS_PREFIX):
        root = dict(defs[raw["$ref"][len(_DEFS_PREFIX) :]])
    kept = {name: defs[name] for name in _reachable(root, defs)}
    schema = {"$schema": DRAFT, **root}
    if kept:
        schema["$defs"] = kept
    return schema


def _reachable(root: Any, defs: dict[str, Any]) -> list[str]:
    """Names in ``defs`` referenced from ``root``, directly or through other defs, sorted."""
    seen: set[str] = set()
    pending = list(_refs(root))
    while pending:
        name = pending.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        pending.extend(_refs(defs[name]))
    return sorted(seen)


def _refs(node: Any) -> list[str]:
    """Every ``#/$defs/<name>`` reference inside ``node``."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS_PREFIX):
                found.append(value[len(_DEFS_PREFIX) :])
            else:
                found.extend(_refs(value))
        return found
    if isinstance(node, list):
        return [name for item in node for name in _refs(item)]
    return []
