"""Is a reported couch pose possible for the commanded motion? (issue 11, item 5)

Arrival is verified against the target, but before this check nothing looked
at the poses reported *during* a move: one status claiming a 50 mm jump was
ignored. A pose the couch cannot have reached is evidence of a faulty encoder,
a controller doing something other than it was told, or corrupted data; igrtd
cannot vouch for the position any more and must stop.

Two rules, each alone makes a report implausible:

* **speed**: per axis, the change since the previous report is at most the
  axis's maximum speed times the elapsed time plus a margin (noise and
  quantisation). The elapsed time is the controller's own uptime difference
  (replies delayed on the line arrive out of order, and the host clock would
  see them as instantaneous), bounded by the host's elapsed time plus the
  longest delay the link tolerates, so that a controller clock that races
  cannot widen the check without limit.
* **path**: every axis of a straight commanded move stays between its start
  and its target; a pose further than the tolerance outside that interval is
  moving away from both.

Pure: no I/O, no clock; the daemon passes times in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from safety.pose import AXES, ROTATION_AXES, UNITS, Pose

# The controller's uptime is a 32-bit millisecond counter (wraps after ~49.7 days).
UPTIME_MODULUS_MS = 1 << 32


@dataclass(frozen=True, slots=True)
class PlausibilityLimits:
    max_speed: Mapping[str, float]  # per axis, mm/s or deg/s
    margin_mm: float
    margin_deg: float
    path_tolerance_mm: float
    path_tolerance_deg: float
    max_transport_delay_s: float  # how late a frame may arrive and still be used

    def margin(self, axis: str) -> float:
        return self.margin_deg if axis in ROTATION_AXES else self.margin_mm

    def path_tolerance(self, axis: str) -> float:
        return self.path_tolerance_deg if axis in ROTATION_AXES else self.path_tolerance_mm


@dataclass(frozen=True, slots=True)
class PoseReport:
    """One status from the controller: the pose, its uptime stamp and when it arrived."""

    pose: Pose
    device_ms: int  # controller uptime when the status was made
    host_s: float  # host monotonic time when it was received


def elapsed_s(previous: PoseReport, report: PoseReport, max_transport_delay_s: float) -> float:
    """Time between two reports, for the speed rule (see module docstring)."""
    d = (report.device_ms - previous.device_ms) % UPTIME_MODULUS_MS
    if d > UPTIME_MODULUS_MS // 2:  # the older of two reordered frames: count the gap
        d = UPTIME_MODULUS_MS - d
    device = d / 1000.0
    host = max(0.0, report.host_s - previous.host_s)
    return min(device, host + max_transport_delay_s)


def implausible_reasons(
    start: Pose,
    target: Pose,
    previous: PoseReport | None,
    report: PoseReport,
    limits: PlausibilityLimits,
) -> list[str]:
    """Every reason the reported pose is impossible for the move start -> target; [] if none."""
    out: list[str] = []
    pose = report.pose
    bad = [a for a in AXES if not math.isfinite(pose.get(a))]
    if bad:
        return [f"reported {', '.join(bad)} not a finite number"]

    if previous is not None and all(math.isfinite(previous.pose.get(a)) for a in AXES):
        dt = elapsed_s(previous, report, limits.max_transport_delay_s)
        for axis in AXES:
            unit = UNITS[axis]
            change = abs(pose.get(axis) - previous.pose.get(axis))
            speed = limits.max_speed.get(axis, math.nan)
            allowed = speed * dt + limits.margin(axis)
            # "not <=": a missing or NaN speed makes every change implausible.
            if not change <= allowed:
                out.append(
                    f"{axis} changed {change:.2f} {unit} in {dt:.3f} s: more than the "
                    f"maximum speed {speed:g} {unit}/s allows ({allowed:.2f} {unit} "
                    f"including a margin of {limits.margin(axis):g} {unit})"
                )

    for axis in AXES:
        unit = UNITS[axis]
        s, t, v = start.get(axis), target.get(axis), pose.get(axis)
        lo, hi = min(s, t), max(s, t)
        tol = limits.path_tolerance(axis)
        outside = lo - v if v < lo else v - hi if v > hi else 0.0
        if not outside <= tol:
            out.append(
                f"{axis} {v:.2f} {unit} is {outside:.2f} {unit} outside the commanded path "
                f"{s:.2f} -> {t:.2f} {unit} (tolerance {tol:g} {unit}): moving away from "
                f"both start and target"
            )
    return out


__all__ = [
    "PlausibilityLimits",
    "PoseReport",
    "elapsed_s",
    "implausible_reasons",
]
