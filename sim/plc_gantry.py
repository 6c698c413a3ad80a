"""The simulated gantry, as the room PLC reads it: register 9 of docs/protocols/room-plc.md.

The gantry angle is an input of the room PLC (its encoder is wired there), so
the simulated PLC holds the gantry and publishes its angle in 0.01 deg. The
gantry is set at once (`set_angle`) or turned at a constant speed
(`rotate_to`), as by hand or by the linac during a couch move, so a test can
turn it while the couch travels and watch the host follow.

The motion is a function of time, not of the PLC cycle: every read of the
register sees the angle at the moment of the read, and a gantry without a
PLC (a room described with `plc: false`) moves the same way. It rotates the
numeric way from the current angle to the target, never through 0/360, so the
register changes monotonically during a rotation (a simplification: a real
gantry's cable wrap decides its way round).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.plc import GANTRY_COUNTS_PER_DEG, GANTRY_FULL_CIRCLE

#: A typical C-arm linac gantry turns at up to 6 deg/s; a ring gantry at up to
#: 4 rpm (24 deg/s). Faster is not a gantry a test could meet, only a typo.
MAX_SPEED_DEG_S = 24.0
#: The speed a linac turns its gantry at, for callers that want "a real gantry".
TYPICAL_SPEED_DEG_S = 6.0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_angle(angle_deg: float) -> float:
    if not (_number(angle_deg) and 0.0 <= angle_deg < 360.0):
        raise ValueError(f"gantry angle {angle_deg!r} deg is out of range 0..360 deg "
                         "(IEC 61217; 360 excluded: it is 0)")
    return float(angle_deg)


@dataclass(frozen=True, slots=True)
class _Rotation:
    start_deg: float
    target_deg: float
    speed_deg_s: float
    started_at: float  # clock seconds

    def angle(self, now: float) -> float:
        travelled = max(0.0, now - self.started_at) * self.speed_deg_s
        span = self.target_deg - self.start_deg
        if travelled >= abs(span):
            return self.target_deg
        return self.start_deg + math.copysign(travelled, span)


class SimGantry:
    """One gantry: its angle now, and the rotation in progress if any."""

    def __init__(self, angle_deg: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        angle = _check_angle(angle_deg)
        self._motion = _Rotation(angle, angle, 0.0, clock())

    def angle_deg(self) -> float:
        """The IEC 61217 gantry angle now, 0 <= angle < 360."""
        return self._motion.angle(self._clock())

    @property
    def target_deg(self) -> float:
        return self._motion.target_deg

    def rotating(self) -> bool:
        return self.angle_deg() != self._motion.target_deg

    def set_angle(self, angle_deg: float) -> None:
        """Put the gantry at `angle_deg` now (a rotation in progress ends there)."""
        angle = _check_angle(angle_deg)
        self._motion = _Rotation(angle, angle, 0.0, self._clock())

    def rotate_to(self, angle_deg: float, speed_deg_s: float) -> float:
        """Turn from where the gantry is now to `angle_deg` at `speed_deg_s`; returns
        the seconds it will take. A rotation in progress continues from its angle."""
        target = _check_angle(angle_deg)
        if not (_number(speed_deg_s) and 0.0 < speed_deg_s <= MAX_SPEED_DEG_S):
            raise ValueError(f"gantry speed {speed_deg_s!r} deg/s is out of range "
                             f"0..{MAX_SPEED_DEG_S:g} deg/s (0 excluded)")
        now = self._clock()
        start = self._motion.angle(now)
        self._motion = _Rotation(start, target, float(speed_deg_s), now)
        return abs(target - start) / speed_deg_s

    def register_value(self) -> int:
        """The angle as register 9 carries it: 0.01 deg, 0..35999 (360.00 wraps to 0)."""
        return round(self.angle_deg() * GANTRY_COUNTS_PER_DEG) % GANTRY_FULL_CIRCLE

    def as_dict(self) -> dict[str, float | bool | None]:
        angle = self.angle_deg()
        moving = angle != self._motion.target_deg
        return {"angle_deg": angle, "target_deg": self._motion.target_deg,
                "speed_deg_s": self._motion.speed_deg_s if moving else None,
                "rotating": moving}
