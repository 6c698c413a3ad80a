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

import datetime as dt
import itertools
import math
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

# DICOM DT (or DA followed by TM): date and time digits, a fraction, an offset.
_DATETIME = re.compile(r"^(\d{8,14})(?:\.(\d{1,6}))?([+-]\d{4})?$")
_ZONE = re.compile(r"^([+-])(\d{2})(\d{2})$")

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
    # The first slice's ImagePositionPatient and the series' orientation: where
    # the volume is, for questions like "is the plan's isocentre inside it".
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0)

    def contains(self, point: tuple[float, float, float]) -> bool:
        """Whether `point` (patient frame, mm) lies within the imaged volume
        (centres of the first and last voxels along each axis)."""
        row, col = self.orientation[:3], self.orientation[3:]
        normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
                  row[0] * col[1] - row[1] * col[0])
        d = [p - o for p, o in zip(point, self.origin, strict=True)]
        extents = ((row, (self.columns - 1) * self.pixel_spacing[1]),
                   (col, (self.rows - 1) * self.pixel_spacing[0]),
                   (normal, (len(self.slices) - 1) * self.spacing_mm))
        for axis, length in extents:
            t = sum(a * b for a, b in zip(d, axis, strict=True))
            if t < -POSITION_TOLERANCE_MM or t > length + POSITION_TOLERANCE_MM:
                return False
        return True


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
                          first.columns, first.pixel_spacing, ordered[0].position,
                          first.orientation)


def acquisition_time(header: Dataset) -> float | None:
    """When the image was acquired (UNIX time), from AcquisitionDateTime, else
    AcquisitionDate + AcquisitionTime, else ContentDate + ContentTime; None when the
    header does not say. DICOM times are the scanner's local time unless
    TimezoneOffsetFromUTC says otherwise; fractions of a second are kept."""
    text = str(header.get("AcquisitionDateTime", "") or "").strip()
    if not text:
        for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"),
                                 ("ContentDate", "ContentTime")):
            date = str(header.get(date_kw, "") or "").strip()
            if date:
                text = date + str(header.get(time_kw, "") or "").strip()
                break
    if not text:
        return None
    m = _DATETIME.match(text)
    if m is None:
        return None
    digits, fraction, zone = m.group(1), m.group(2) or "", m.group(3)
    zone = zone or str(header.get("TimezoneOffsetFromUTC", "") or "").strip() or None
    try:
        when = dt.datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    when = when.replace(microsecond=int(fraction.ljust(6, "0")) if fraction else 0)
    if zone is not None:
        z = _ZONE.match(zone)
        if z is None:
            return None
        minutes = int(z.group(2)) * 60 + int(z.group(3))
        when = when.replace(tzinfo=dt.timezone(dt.timedelta(
            minutes=minutes if z.group(1) == "+" else -minutes)))
    return when.timestamp()
