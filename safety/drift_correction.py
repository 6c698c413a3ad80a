"""Correction between beams: a drift seen by the intrafraction markers as a registration.

When beam-on monitoring holds the beam because the target drifted and stayed
off (issue 17, items 7-9), igrtd proposes a couch correction from the tracked
markers. This module turns the markers' planned positions and where they were
seen (room frame, IEC 61217, mm, origin at the isocentre) into:

* the room-frame drift `D` (anatomy that belongs at r is at D(r)): a pure
  translation from one or two markers (the tracker's target displacement, the
  mean of the markers'), a rigid fit (rotation too) from three or more;
* the registration matrix `T` (ITK fixed -> moving) the geometry contract
  (docs/geometry.md) turns into a couch target: from
  D(r) = M (T(M^-1 r + iso) - iso), T = Tr(iso) M^-1 D M Tr(-iso).

So a between-beam correction goes through exactly the planner, limits and
verdict tiers of any other (safety.correction.plan_correction).

`settled_drift` decides whether the frames seen while the beam was held show
one settled position to correct to: the marker positions of the window are
averaged (noise of a single stereo estimate is a few tenths of a mm), and a
spread larger than `max_spread_mm` (the target still moving: breathing,
coughing) gives no correction. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from safety.geometry import orientation_matrix
from safety.qa_geometry import rigid_fit

# Three markers closer than this to one line give no usable rotation: the rigid
# fit is then refused and the translation alone is used.
MIN_MARKER_SPREAD_MM = 5.0
# A marker seen further than this from where the rigid fit puts it: one of them
# was misfound or the anatomy deformed; no rotation is derived from them.
MAX_FIT_RMS_MM = 1.0


@dataclass(frozen=True)
class DriftCorrection:
    """The drift to correct and the registration that expresses it."""

    drift: np.ndarray  # 4x4 room-frame map D (planned -> seen)
    matrix: np.ndarray  # 4x4 registration T for plan_correction
    translation_mm: tuple[float, float, float]  # D's displacement of the planned target
    rotation_deg: float  # angle of D's rotation (0 for a translation)
    markers: int
    frames: int
    spread_mm: float  # largest distance of one frame's target from the window's mean
    method: str  # "translation" | "rigid"
    note: str = ""  # why the rotation was not used, when it was not

    def view(self) -> dict[str, object]:
        return {
            "translation_mm": [round(v, 3) for v in self.translation_mm],
            "rotation_deg": round(self.rotation_deg, 3),
            "markers": self.markers, "frames": self.frames,
            "spread_mm": round(self.spread_mm, 3), "method": self.method,
            **({"note": self.note} if self.note else {}),
        }


def _points(value: Sequence[Sequence[float]], name: str) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        raise ValueError(f"{name} must be one or more points (x, y, z mm), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds a value that is not a finite number (mm)")
    return a


def _h(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = t
    return out


def registration_for_drift(drift: np.ndarray, iso: Sequence[float],
                           patient_position: str) -> np.ndarray:
    """T (ITK fixed -> moving) with D(r) = M (T(M^-1 r + iso) - iso) (docs/geometry.md)."""
    m = orientation_matrix(patient_position)
    iso_v = np.asarray(iso, dtype=float)
    if iso_v.shape != (3,) or not np.all(np.isfinite(iso_v)):
        raise ValueError(f"isocentre {list(iso)} is not 3 finite numbers (mm)")
    to_room = _h(m, -m @ iso_v)  # planning q -> room M (q - iso)
    from_room = _h(m.T, iso_v)  # room r -> planning M^-1 r + iso
    return from_room @ np.asarray(drift, dtype=float) @ to_room


def settled_drift(planned_markers: Sequence[Sequence[float]],
                  planned_target: Sequence[float],
                  seen_markers: Sequence[Sequence[Sequence[float]]],
                  *, max_spread_mm: float) -> DriftCorrection:
    """The drift from a window of frames' marker positions (frames x markers x 3).

    ValueError (one line) when there is nothing to correct to: no frames, a frame
    that does not hold every marker, a value that is not finite, or a window whose
    target positions spread further than `max_spread_mm` (still moving)."""
    planned = _points(planned_markers, "planned markers")
    target = _points([planned_target], "planned target")[0]
    if not (math.isfinite(max_spread_mm) and max_spread_mm > 0):
        raise ValueError(f"max_spread_mm {max_spread_mm} must be a positive number (mm)")
    frames = [_points(f, f"markers of frame {i}") for i, f in enumerate(seen_markers)]
    if not frames:
        raise ValueError("no frame with a target estimate to correct to")
    for i, f in enumerate(frames):
        if f.shape != planned.shape:
            raise ValueError(f"frame {i} holds {len(f)} markers, the plan {len(planned)}")
    stack = np.stack(frames)  # (F, M, 3)
    # The tracker's target of each frame: the plan's target moved by the markers' mean.
    targets = target + (stack - planned).mean(axis=1)
    mean_target = targets.mean(axis=0)
    spread = float(np.linalg.norm(targets - mean_target, axis=1).max())
    if not spread <= max_spread_mm:
        raise ValueError(f"the target is not settled: its position over the last {len(frames)} "
                         f"frames spreads {spread:.2f} mm, more than {max_spread_mm:g} mm")
    seen = stack.mean(axis=0)
    shift = mean_target - target
    drift, method, note, angle = _h(np.eye(3), shift), "translation", "", 0.0
    if len(planned) >= 3:
        try:
            spread_m = np.linalg.svd(planned - planned.mean(axis=0), compute_uv=False)
            if not spread_m[1] >= MIN_MARKER_SPREAD_MM:
                raise ValueError(f"the markers lie within {spread_m[1]:.1f} mm of one line")
            fit = rigid_fit(planned, seen, max_rms_mm=MAX_FIT_RMS_MM)
        except ValueError as exc:
            note = f"rotation not used: {exc}"
        else:
            drift, method = fit.matrix, "rigid"
            c = (float(np.trace(fit.matrix[:3, :3])) - 1.0) / 2.0
            angle = math.degrees(math.acos(max(-1.0, min(1.0, c))))
            moved = fit.matrix[:3, :3] @ target + fit.matrix[:3, 3]
            shift = moved - target
    return DriftCorrection(
        drift=drift, matrix=np.eye(4), translation_mm=(float(shift[0]), float(shift[1]),
                                                       float(shift[2])),
        rotation_deg=angle, markers=len(planned), frames=len(frames), spread_mm=spread,
        method=method, note=note)


def drift_correction(planned_markers: Sequence[Sequence[float]],
                     planned_target: Sequence[float],
                     seen_markers: Sequence[Sequence[Sequence[float]]],
                     iso: Sequence[float], patient_position: str,
                     *, max_spread_mm: float) -> DriftCorrection:
    """`settled_drift` with its registration matrix for the session's plan."""
    d = settled_drift(planned_markers, planned_target, seen_markers,
                      max_spread_mm=max_spread_mm)
    return replace(d, matrix=registration_for_drift(d.drift, iso, patient_position))
