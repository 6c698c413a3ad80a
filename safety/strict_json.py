"""Strict JSON reading for every outside input igrt takes.

Python's `json` module accepts `NaN`, `Infinity` and `-Infinity` (and turns
`1e400` into infinity), lets a later duplicate key silently replace an earlier
one, and recurses once per nesting level, so a few kilobytes of brackets raise
`RecursionError` from deep inside the parser. Each of these has let a hostile
or broken input through a check (a NaN time passes every comparison) or taken
igrtd down. Every JSON document igrt reads from outside - commands, local
requests, configuration, files - goes through `loads` here:

* nesting deeper than `max_depth` is refused before the parser runs, by a
  linear scan, so no input can reach the interpreter's recursion limit;
* documents larger than `max_bytes` are refused without being parsed;
* NaN, +-Infinity and numbers that overflow a float are refused;
* duplicate keys in one object are refused (two readers could disagree on
  which one counts).

Every refusal is a `JsonInputError` (a `ValueError`) with a one-line message.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1 << 20

# A JSON string literal (with escapes), or one structural bracket.
# Possessive quantifiers: an unterminated string cannot make the scan backtrack.
_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


class JsonInputError(ValueError):
    """A JSON document igrt will not use; the message is one line."""


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a number igrt accepts (only finite numbers)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"number {text[:40]} is out of range (only finite numbers)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonInputError(f"duplicate key {key[:40]!r} in one object")
        out[key] = value
    return out


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of `text`, brackets inside strings ignored."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def loads(
    data: str | bytes | bytearray,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Parse one JSON document strictly; raise `JsonInputError` for anything refused."""
    if len(data) > max_bytes:
        raise JsonInputError(f"JSON document is {len(data)} bytes, limit {max_bytes} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"JSON is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonInputError(f"JSON nesting depth {depth} exceeds the limit of {max_depth}")
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except JsonInputError:
        raise
    except RecursionError:  # the scan above should make this unreachable; belt and braces
        raise JsonInputError("JSON nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"malformed JSON: {exc.msg} at line {exc.lineno} column "
                             f"{exc.colno}") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise JsonInputError(f"malformed JSON: {str(exc).splitlines()[0]}") from None
