"""How igrtctl shows a result: JSON, or an indented human reading; hold progress."""

from __future__ import annotations

import json
import math
from typing import Any


def print_result(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        _print_human(obj)


def _print_human(obj: Any, indent: str = "") -> None:
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


def progress_line(p: dict[str, Any]) -> str:
    rem = p.get("remaining") or {}
    t = math.sqrt(sum(rem.get(a, 0.0) ** 2 for a in ("lat", "long", "vert")))
    r = max((abs(rem.get(a, 0.0)) for a in ("yaw", "pitch", "roll")), default=0.0)
    return f"{p.get('state', '?'):<10} remaining {t:6.2f} mm, {r:5.2f} deg"
