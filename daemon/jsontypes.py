"""The shape of what igrt sends and stores as JSON: replies, events, audit details.

Replies to commands, room snapshots, audit record details and stored proposal
records all end up as JSON text. Typing them `JsonObject` (rather than a dict of
anything) makes mypy prove that only JSON-representable values go in, and makes
a reader narrow a value before using it: a reply field read by igrtctl or a
record read back from the store is outside input until checked.

The `as_*` helpers narrow one value and raise `JsonShapeError` (a ValueError) naming the field and
what was found, so a reader turns a malformed reply or record into a one-line
error instead of an AttributeError deep inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

JsonValue: TypeAlias = "str | int | float | bool | None | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"
# What a function accepts when it only reads a JSON object (covariant, so a
# dict[str, float] or a dict[str, JsonObject] fits).
JsonMapping: TypeAlias = "Mapping[str, object]"


class JsonShapeError(ValueError):
    """A JSON value of the wrong kind where a reader expected another.

    A ValueError (not a TypeError): the value came from outside (a reply, a
    stored record), so this is bad input to report in one line, not a bug.
    """


def _what(value: object) -> str:
    return type(value).__name__ if value is not None else "null"


def as_object(value: object, field: str = "value") -> JsonObject:
    """`value` as a JSON object, or ValueError naming `field`."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise JsonShapeError(f"{field}: expected an object, got {_what(value)}")
    return value


def as_list(value: object, field: str = "value") -> list[JsonValue]:
    """`value` as a JSON array, or ValueError naming `field`."""
    if not isinstance(value, list):
        raise JsonShapeError(f"{field}: expected an array, got {_what(value)}")
    return value


def as_str(value: object, field: str = "value") -> str:
    """`value` as a string, or ValueError naming `field`."""
    if not isinstance(value, str):
        raise JsonShapeError(f"{field}: expected a string, got {_what(value)}")
    return value


def as_float(value: object, field: str = "value") -> float:
    """`value` as a number (int or float, never bool), or ValueError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JsonShapeError(f"{field}: expected a number, got {_what(value)}")
    return float(value)


def as_int(value: object, field: str = "value") -> int:
    """`value` as an integer (never bool), or ValueError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise JsonShapeError(f"{field}: expected an integer, got {_what(value)}")
    return value


def as_bool(value: object, field: str = "value") -> bool:
    """`value` as a boolean, or ValueError naming `field`."""
    if not isinstance(value, bool):
        raise JsonShapeError(f"{field}: expected true or false, got {_what(value)}")
    return value
