"""Whether the slices of a CT series make one volume igrt can compute with.

A series arrives slice by slice; each slice passed its own checks
(imaging/dicom_instances.py). Before the series is used (as the planning CT
or a daily image), the slices together must form one regular volume: the
same orientation, axis-aligned (no oblique acquisition), the same matrix and
pixel spacing, positions along the slice normal (no gantry tilt), every slice
present (uniform spacing, no gap) and none twice. A series that fails is
refused with one line naming the slice, the value and the tolerance; nothing
of it reaches registration or planning.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

# Positions and spacings are written with 4-6 decimals by scanners; these are far
# above that rounding and far below anything that would move a target.
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-3


class SeriesRefused(ValueError):
    """The series is not one regular volume; the message is one line."""


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    sop_instance_uid: str
    position: tuple[float, float, float]  # ImagePositionPatient, mm
    orientation: tuple[float, float, float, float, float, float]  # ImageOrientationPatient
    pixel_spacing: tuple[float, float]  # mm (row spacing, column spacing)
    rows: int
    columns: int


@dataclass(frozen=True, slots=True)
class SeriesGeometry:
    slices: tuple[str, ...]  # SOP Instance UIDs in position order along the normal
    spacing_mm: float
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]


def _axis_aligned(v: tuple[float, ...]) -> bool:
    return sum(abs(c) > ORIENTATION_TOLERANCE for c in v) == 1 and \
        all(abs(abs(c) - 1.0) <= ORIENTATION_TOLERANCE for c in v if abs(c) > ORIENTATION_TOLERANCE)


def check_series(slices: list[SliceGeometry]) -> SeriesGeometry:
    """The geometry of the volume `slices` make, or SeriesRefused."""
    if len(slices) < 2:
        raise SeriesRefused(f"a volume needs at least 2 slices, the series has {len(slices)}")
    first = slices[0]
    for s in slices[1:]:
        if any(abs(a - b) > ORIENTATION_TOLERANCE
               for a, b in zip(s.orientation, first.orientation, strict=True)):
            raise SeriesRefused(f"slice {s.sop_instance_uid} has orientation {s.orientation}, "
                                f"the series {first.orientation}: mixed orientations")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise SeriesRefused(f"slice {s.sop_instance_uid} is {s.rows}x{s.columns}, the "
                                f"series {first.rows}x{first.columns}")
        if any(abs(a - b) > 1e-4 for a, b in zip(s.pixel_spacing, first.pixel_spacing,
                                                 strict=True)):
            raise SeriesRefused(f"slice {s.sop_instance_uid} has pixel spacing "
                                f"{s.pixel_spacing} mm, the series {first.pixel_spacing} mm")
    row, col = first.orientation[:3], first.orientation[3:]
    if not (_axis_aligned(row) and _axis_aligned(col)):
        raise SeriesRefused(f"oblique orientation {first.orientation}: igrt uses axial, "
                            f"axis-aligned series only (tolerance {ORIENTATION_TOLERANCE})")
    normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
              row[0] * col[1] - row[1] * col[0])
    ordered = sorted(slices, key=lambda s: sum(p * n for p, n in zip(s.position, normal,
                                                                      strict=True)))
    origin = ordered[0].position
    along: list[float] = []
    for s in ordered:
        d = [p - o for p, o in zip(s.position, origin, strict=True)]
        t = sum(a * n for a, n in zip(d, normal, strict=True))
        off = math.sqrt(max(0.0, sum(a * a for a in d) - t * t))
        if off > POSITION_TOLERANCE_MM:
            raise SeriesRefused(f"slice {s.sop_instance_uid} is {off:.3f} mm off the slice "
                                f"normal through the first slice (tolerance "
                                f"{POSITION_TOLERANCE_MM} mm): gantry tilt or a shifted slice")
        along.append(t)
    gaps = [b - a for a, b in itertools.pairwise(along)]
    for s, gap in zip(ordered[1:], gaps, strict=True):
        if gap <= POSITION_TOLERANCE_MM:
            raise SeriesRefused(f"slice {s.sop_instance_uid} is at the same position as "
                                f"another ({gap:.3f} mm apart): a duplicate slice")
    spacing = min(gaps)
    for s, gap in zip(ordered[1:], gaps, strict=True):
        if abs(gap - spacing) > POSITION_TOLERANCE_MM:
            missing = round(gap / spacing) - 1
            what = (f"{missing} slice(s) missing before it" if missing >= 1
                    else "non-uniform spacing")
            raise SeriesRefused(f"slice {s.sop_instance_uid} is {gap:.3f} mm from the previous "
                                f"one, the series spacing is {spacing:.3f} mm (tolerance "
                                f"{POSITION_TOLERANCE_MM} mm): {what}")
    return SeriesGeometry(tuple(s.sop_instance_uid for s in ordered), spacing, first.rows,
                          first.columns, first.pixel_spacing)
