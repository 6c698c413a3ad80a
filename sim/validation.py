"""Strict models and one-line refusals for what people type at the simulator.

A room description file and every control operation's arguments are checked
the same way as igrtd's own configuration: strict types (JSON `true` is not
1, "5" is not 5), no unknown keys, finite numbers only, and a refusal is one
line naming the value, the limit and the unit, so a console vendor's CI log
says what was wrong without a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    # strict: no lax coercion of text or booleans to numbers; allow_inf_nan=False:
    # NaN and Infinity are refused wherever a number belongs.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Unit of a field from its name, so a range error reads "900 s exceeds the limit 600 s".
_UNIT_BY_NAME = {"seconds": "s", "since": "s", "angle_deg": "deg", "code": "", "n": "frames",
                 "kg": "kg", "mm_per_m": "mm/m", "deg_per_m": "deg/m",
                 "mm_per_m_per_100kg": "mm/m per 100 kg", "deg_per_m_per_100kg": "deg/m per 100 kg"}
_UNIT_SUFFIXES = (("_mm_s", "mm/s"), ("_deg_s", "deg/s"), ("_mm", "mm"), ("_deg", "deg"),
                  ("_kg", "kg"), ("_s", "s"))
_POSE_UNITS = {"lat": "mm", "long": "mm", "vert": "mm", "yaw": "deg", "pitch": "deg",
               "roll": "deg"}
_LIMIT_TEXT = {"greater_than": ("gt", "must be above"),
               "greater_than_equal": ("ge", "is below the minimum"),
               "less_than": ("lt", "must be below"),
               "less_than_equal": ("le", "exceeds the limit")}


def unit_of(loc: tuple[Any, ...]) -> str:
    """' mm', ' s', ... for the field at `loc`, or '' when it has no unit."""
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    unit = _UNIT_BY_NAME.get(name) or _POSE_UNITS.get(name)
    if unit is None:
        unit = next((u for suffix, u in _UNIT_SUFFIXES if name.endswith(suffix)), "")
    return f" {unit}" if unit else ""


def shown(value: Any) -> str:
    text = "null" if value is None else (
        str(value).lower() if isinstance(value, bool) else repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and part.startswith(("function-", "tagged-union"))):
            out += f".{part}" if out else str(part)
    return out


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))


def describe_error(err: Any) -> str:
    """One pydantic error as 'where: value unit <relation> limit unit'."""
    loc = tuple(err.get("loc", ()))
    where = _where(loc) or "(top level)"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    given = err.get("input")
    if kind in _LIMIT_TEXT:
        key, text = _LIMIT_TEXT[kind]
        unit = unit_of(loc)
        return f"{where}: {shown(given)}{unit} {text} {ctx.get(key)}{unit}"
    if kind == "finite_number":
        return f"{where}: {shown(given)} is not a finite number (NaN and Infinity are refused)"
    if kind in ("value_error", "assertion_error") and ctx.get("error") is not None:
        return f"{where}: {ctx['error']}"
    msg = str(err.get("msg", "invalid value"))
    if kind not in ("missing", "extra_forbidden") and not isinstance(given, (dict, list)):
        msg += f" (got {shown(given)})"
    return f"{where}: {msg}"


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """The first problem of a validation error on one printable line (+N more)."""
    errors = exc.errors()
    if not errors:
        return _printable(prefix + "invalid input")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return _printable(prefix + describe_error(errors[0]) + more)


def schema_main(prog: str, path: Path, schema_text: Callable[[], str],
                argv: list[str] | None) -> int:
    """`python -m <module> --write-schema`: rewrite a committed JSON Schema (a test
    checks that the committed one is current)."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--write-schema", action="store_true", help=f"write {path}")
    if ap.parse_args(argv).write_schema:
        path.write_text(schema_text())
    return 0
