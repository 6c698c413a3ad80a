"""A JSON writer that can say what `json.dumps` cannot: raw number tokens such as
`1e400` or `NaN`, objects with duplicate keys, and any nesting depth without
recursion. Fuzz strategies build hostile documents with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Raw:
    """Text written verbatim where a value belongs (e.g. `1e400`, `NaN`, `-Infinity`)."""

    text: str


@dataclass(frozen=True)
class Obj:
    """A JSON object as ordered pairs, so one key may appear twice."""

    pairs: tuple[tuple[str, Any], ...]


def _scalar(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(value: Any) -> str:
    """Serialise `value` (dict, list, tuple, Obj, Raw, scalars) without recursion."""
    out: list[str] = []
    # Work stack of values to write or literal text to emit.
    stack: list[tuple[str, Any]] = [("value", value)]
    while stack:
        kind, item = stack.pop()
        if kind == "text":
            out.append(item)
            continue
        if isinstance(item, dict):
            item = Obj(tuple(item.items()))
        if isinstance(item, Obj):
            parts: list[tuple[str, Any]] = [("text", "{")]
            for i, (k, v) in enumerate(item.pairs):
                parts.append(("text", ("," if i else "") + json.dumps(k) + ":"))
                parts.append(("value", v))
            parts.append(("text", "}"))
            stack.extend(reversed(parts))
        elif isinstance(item, (list, tuple)):
            parts = [("text", "[")]
            for i, v in enumerate(item):
                if i:
                    parts.append(("text", ","))
                parts.append(("value", v))
            parts.append(("text", "]"))
            stack.extend(reversed(parts))
        else:
            out.append(_scalar(item))
    return "".join(out)


def deep_array_doc(depth: int, key: str = "a") -> str:
    """`{"a": [[[...]]]}`: the shape of the 5,000-deep document of issue 11."""
    return "{" + json.dumps(key) + ":" + "[" * depth + "]" * depth + "}"


def deep_object_doc(depth: int) -> str:
    """`{"a":{"a":...{}}}` nested `depth` objects deep."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
