"""How the room configuration reports a problem: one line each, at its exact key.

Turns pydantic's errors (and the problems the configuration's own validators
find) into `(location, message)` pairs naming the value given and, for a
range, the limit and the unit ("motion.hold_timeout_s: 9 s exceeds the limit
2 s"), so `igrtd --check-config` points at what to fix.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# A pydantic error location: field names and list indexes, outermost first.
Loc = tuple[int | str, ...]


class Located(ValueError):
    """Problems found by a validator, each at a place inside the field or model that
    raised it ("" = that place itself), so the report points at the exact key."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__("; ".join(f"{w}: {m}" if w else m for w, m in self.problems))


class ConfigError(Exception):
    """Every problem found in a configuration file, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def join_loc(outer: str, inner: str) -> str:
    """`inner` (a place inside `outer`) as one location."""
    if not inner:
        return outer or "(top level)"
    if not outer:
        return inner
    return outer + (inner if inner.startswith("[") else f".{inner}")


# Unit of a field from its name's suffix, so a range error reads "9 s, limit 2 s".
_UNIT_SUFFIXES = (("_mm_s", "mm/s"), ("_deg_s", "deg/s"), ("_ms", "ms"), ("_mm", "mm"),
                  ("_deg", "deg"), ("_hz", "Hz"), ("_px", "px"), ("_s", "s"))
_LIMIT_TEXT = {"greater_than": ("gt", "must be above"),
               "greater_than_equal": ("ge", "is below the minimum"),
               "less_than": ("lt", "must be below"),
               "less_than_equal": ("le", "exceeds the limit")}


def unit_of(loc: Loc) -> str:
    """" mm", " s", ...: the unit of the field at `loc`, from its name; "" if none."""
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    for suffix, text in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return f" {text}"
    return ""


def shown(value: object) -> str:
    """A value as the file spells it, cut short: `null`, `true`, `'5'`, `1e+30`."""
    text = "null" if value is None else (
        str(value).lower() if isinstance(value, bool) else repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: ErrorDetails) -> list[tuple[str, str]]:
    """(location, message) pairs for one pydantic error, messages naming the value
    given and, for a range, the limit and the unit."""
    loc = tuple(err.get("loc", ()))
    where = _format_loc(loc)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    given = err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, Located):
        return [(join_loc(where, w), m) for w, m in cause.problems]
    if kind in ("value_error", "assertion_error") and cause is not None:
        return [(where or "(top level)", str(cause))]
    if kind in _LIMIT_TEXT:
        key, text = _LIMIT_TEXT[kind]
        u = unit_of(loc)
        return [(where, f"{shown(given)}{u} {text} {ctx.get(key)}{u}")]
    msg = str(err.get("msg", "invalid value"))
    if kind not in ("missing", "extra_forbidden") and not isinstance(given, (dict, list)):
        msg += f" (got {shown(given)})"
    return [(where or "(top level)", msg)]


def nested_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Every problem of a failed validation as (location, message)."""
    out: list[tuple[str, str]] = []
    for e in exc.errors():
        out += _describe(e)
    return out


def not_numbers(value: object, where: str = "") -> list[tuple[str, str]]:
    """Booleans and numbers-as-text anywhere in a nested safety model: pydantic's
    lax mode there would read `true` as 1 and "5" as 5."""
    if isinstance(value, bool):
        return [(where, f"{shown(value)} where a number belongs")]
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return []
        return [(where, f"{value!r} is text; write numbers without quotes")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in not_numbers(v, join_loc(where, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in not_numbers(v, f"{where}[{i}]")]
    return []
