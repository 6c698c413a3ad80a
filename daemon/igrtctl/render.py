"""How igrtctl shows a result: JSON, or an indented human reading; hold progress."""

from __future__ import annotations

import json
import math

from daemon.jsontypes import JsonMapping, as_float, as_object, as_str


def print_result(obj: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        _print_human(obj)


def _print_human(obj: object, indent: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                print(f"{indent}{k}:")
                _print_human(v, indent + "  ")
            elif isinstance(v, float):
                print(f"{indent}{k}: {v:.3f}")
            else:
                print(f"{indent}{k}: {v}")
    else:
        print(f"{indent}{obj}")


def progress_line(p: JsonMapping) -> str:
    """One line of hold progress; ValueError naming the field when `p` is not a hold result."""
    rem = as_object(p.get("remaining") or {}, "remaining")

    def axis(name: str) -> float:
        return as_float(rem.get(name, 0.0), f"remaining.{name}")

    t = math.sqrt(sum(axis(a) ** 2 for a in ("lat", "long", "vert")))
    r = max((abs(axis(a)) for a in ("yaw", "pitch", "roll")), default=0.0)
    state = as_str(p.get("state", "?"), "state")
    return f"{state:<10} remaining {t:6.2f} mm, {r:5.2f} deg"
