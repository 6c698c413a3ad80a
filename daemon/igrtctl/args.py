"""Argument helpers shared by igrtctl's subcommands."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from daemon.igrtctl.exits import UsageError


def join_negative_values(argv: Sequence[str], options: Iterable[str]) -> list[str]:
    """`--iso -25,10,-15` -> `--iso=-25,10,-15`.

    argparse takes a value that starts with "-" for an option, and negative
    coordinates are ordinary in every frame we use.
    """
    wanted = frozenset(options)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in wanted and len(nxt) > 1 and nxt[0] == "-" and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def parse_xyz(text: str, what: str) -> tuple[float, float, float]:
    """Three finite comma-separated numbers in mm; ValueError naming `what` otherwise."""
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be X,Y,Z in mm, got {text!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} must be 3 finite numbers X,Y,Z in mm, got {text!r}")
    return vals  # type: ignore[return-value]


def triple(text: str, what: str) -> tuple[float, float, float]:
    """parse_xyz for an option: UsageError (exit USAGE) naming `what` otherwise."""
    try:
        return parse_xyz(text, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
