"""Room interlocks as a snapshot of named inputs, and which of them block motion.

An input is "closed" when its safe condition holds (door closed, e-stop chain
intact, ...). Anything not known to be closed and fresh counts as open: an
input that is reported open, an input older than the allowed age, a whole
snapshot whose source (the PLC) has stopped updating, or a required input
missing from the snapshot. Times are monotonic seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DOOR_CLOSED = "door_closed"
ESTOP_CHAIN_OK = "estop_chain_ok"
COLLISION_PADS_CLEAR = "collision_pads_clear"
MOTION_ENABLE_PRESSED = "motion_enable_pressed"
IMAGER_ARMS_PARKED = "imager_arms_parked"

STANDARD_INPUTS: tuple[str, ...] = (
    DOOR_CLOSED,
    ESTOP_CHAIN_OK,
    COLLISION_PADS_CLEAR,
    MOTION_ENABLE_PRESSED,
    IMAGER_ARMS_PARKED,
)

# What the console shows when a standard input is open; other inputs get "<name> open".
_OPEN_TEXT: dict[str, str] = {
    DOOR_CLOSED: "door open",
    ESTOP_CHAIN_OK: "emergency stop chain broken",
    COLLISION_PADS_CLEAR: "collision pad pressed",
    MOTION_ENABLE_PRESSED: "motion enable not pressed",
    IMAGER_ARMS_PARKED: "imager arms not parked",
}


@dataclass(frozen=True, slots=True)
class InterlockInput:
    name: str
    closed: bool
    age_s: float  # age of this reading when the snapshot was taken


@dataclass(frozen=True, slots=True)
class InterlockSnapshot:
    inputs: tuple[InterlockInput, ...]
    taken_at: float  # monotonic time the snapshot was taken
    source_age_s: float  # age of the source's heartbeat when the snapshot was taken
    source: str = "plc"

    def get(self, name: str) -> InterlockInput | None:
        for item in self.inputs:
            if item.name == name:
                return item
        return None


def open_text(name: str) -> str:
    return _OPEN_TEXT.get(name, f"{name} open")


def open_interlocks(
    snapshot: InterlockSnapshot,
    now: float,
    max_age_s: float,
    required: Iterable[str] = (),
) -> list[str]:
    """Reasons motion is blocked; empty means every input is closed and fresh."""
    reasons: list[str] = []
    elapsed = now - snapshot.taken_at
    if not elapsed >= 0:
        # A snapshot from the future (or NaN times) cannot be trusted to describe now.
        reasons.append(f"{snapshot.source} snapshot time is invalid ({elapsed:.2f} s old)")
        elapsed = math.inf
    source_age = snapshot.source_age_s + elapsed
    if not source_age <= max_age_s:
        reasons.append(f"{snapshot.source} heartbeat stale {source_age:.2f} s > {max_age_s:.2f} s")
    for item in snapshot.inputs:
        age = item.age_s + elapsed
        if not item.closed:
            reasons.append(open_text(item.name))
        elif not age <= max_age_s:
            reasons.append(f"{item.name} stale {age:.2f} s > {max_age_s:.2f} s")
    present = {item.name for item in snapshot.inputs}
    for name in required:
        if name not in present:
            reasons.append(f"{name} missing from {snapshot.source} snapshot")
    return reasons
