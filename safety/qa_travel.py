"""Couch axis travel in the daily QA: each translation's scale and the couch's yaw offset.

The daily pattern's +-10 mm steps say whether each move lands within 1 mm; they are
too short to see a scale error of a few tenths of a percent (0.8 % of 10 mm is
0.08 mm, the size of the repeatability noise) or a yaw offset (a couch whose table
top is really at 0.15 deg while it reports 0 moves 10 mm of long with 0.026 mm of
lateral drift). The travel part of the daily pattern (`travel_pattern`) moves each
translation axis alone a longer way, +T and -T (50 mm by default), and images each:

* the travel check per axis: the largest |measured - expected| of any translation
  component over that axis's travels (mm; the positioning limit);
* `fit_axes`, findings for the calibration:
  - scale of each translation axis: least-squares slope of the measured motion along
    the axis against the commanded one (steps and travels together), minus 1;
  - yaw offset: a table top turned by psi from where the couch says it is carries a
    lateral move c partly along long (c sin psi) and a long move c partly against
    lateral (-c sin psi); psi is the least-squares angle of both, in degrees;
  - each with its standard error from the measurement noise (the returns to home).
  The axis_alignment check (axis yaw) compares the yaw offset with the rotation limit.

A travel image is measured by the BB alone (a translation moves every point alike;
the air holes, up to 75 mm from the BB, would leave the CBCT's field of view). Its
`measured_mm` is the BB's motion in couch translation axes (lat, long, vert) relative
to the baseline image. An imaging-isocentre offset cancels (both images carry it);
a baseline error cancels in the slopes, the travels being symmetric about home.

Under a calibration (safety.qa module doc) the expected motion of a travel is what the
calibration predicts: the predicted real translation, turned by the predicted real yaw
less the reported one (so a calibrated yaw offset is expected, not an error), and the
alignment check judges the measured yaw offset less the calibrated one.

Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from safety.geometry import rot_z
from safety.pose import Pose
from safety.qa_tolerances import finite_number
from safety.qa_values import Vec3, clean, vec3

if TYPE_CHECKING:
    from safety.qa_calibration import Calibration

__all__ = ["TRAVEL_AXES", "AxisFit", "TravelMeasurement", "expected_travel", "fit_axes",
           "travel_pattern"]

TRAVEL_AXES = ("lat", "long", "vert")
# The longest travel a daily QA may command (mm): the BB must stay inside the CBCT.
MAX_TRAVEL_MM = 100.0


@dataclass(frozen=True, slots=True)
class TravelMeasurement:
    """One image after a travel: `axis` moved alone by `commanded_mm` from the QA home;
    `measured_mm`: how the BB moved relative to the baseline, in couch translation axes
    (lat, long, vert mm)."""

    axis: str
    commanded_mm: float
    measured_mm: Vec3
    label: str = ""

    def __post_init__(self) -> None:
        if self.axis not in TRAVEL_AXES:
            raise ValueError(f"travel axis {self.axis!r} is not one of "
                             f"{', '.join(TRAVEL_AXES)}")
        c = finite_number(self.commanded_mm, f"{self.axis} travel", "mm")
        if c == 0.0:
            raise ValueError(f"{self.axis} travel of 0 mm is a return to home, not a travel")
        object.__setattr__(self, "commanded_mm", c)
        object.__setattr__(self, "measured_mm", vec3(self.measured_mm, "travel measured_mm"))
        if not isinstance(self.label, str):
            raise ValueError(f"travel label must be text, got {self.label!r}")  # noqa: TRY004

    @property
    def commanded_vec(self) -> Vec3:
        i = TRAVEL_AXES.index(self.axis)
        return (self.commanded_mm if i == 0 else 0.0, self.commanded_mm if i == 1 else 0.0,
                self.commanded_mm if i == 2 else 0.0)

    def error_mm(self, expected: Vec3) -> float:
        """The largest |measured - expected| of the three translation components."""
        return max(abs(m - e) for m, e in zip(self.measured_mm, expected, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "axis": self.axis, "commanded_mm": clean(self.commanded_mm),
                "measured_mm": dict(zip(TRAVEL_AXES, map(clean, self.measured_mm), strict=True))}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TravelMeasurement:
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a travel measurement must be an object, got {type(d).__name__}")
        m = d.get("measured_mm")
        if not isinstance(m, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                "a travel measurement needs measured_mm {lat, long, vert}")
        return cls(str(d.get("axis")), d.get("commanded_mm"),  # type: ignore[arg-type]
                   tuple(m.get(a) for a in TRAVEL_AXES),  # type: ignore[arg-type]
                   str(d.get("label", "")))


def travel_pattern(travel_mm: float) -> list[Pose]:
    """The travel part of the daily pattern, relative to the QA home: for lat, long and
    vert in turn +T, -T, home. 0 mm: no travel part."""
    t = finite_number(travel_mm, "travel_mm", "mm")
    if t == 0.0:
        return []
    if not 0.0 < t <= MAX_TRAVEL_MM:
        raise ValueError(f"travel_mm {t:g} mm is outside 0..{MAX_TRAVEL_MM:g} mm")
    out: list[Pose] = []
    for axis in TRAVEL_AXES:
        out += [Pose(**{axis: t}), Pose(**{axis: -t}), Pose()]
    return out


@dataclass(frozen=True)
class AxisFit:
    """`fit_axes`'s findings: per translation axis moved, its scale (fraction: +0.008 is
    0.8 % too far) and standard error; the yaw offset (deg) and its standard error, None
    unless both lat and long were moved."""

    scale: dict[str, float]
    scale_se: dict[str, float]
    yaw_offset_deg: float | None
    yaw_offset_se_deg: float | None
    noise_mm: float

    def to_json(self) -> dict[str, Any]:
        return {"scale": {a: clean(v) for a, v in self.scale.items()},
                "scale_se": {a: clean(v) for a, v in self.scale_se.items()},
                "yaw_offset_deg": None if self.yaw_offset_deg is None
                else clean(self.yaw_offset_deg),
                "yaw_offset_se_deg": None if self.yaw_offset_se_deg is None
                else clean(self.yaw_offset_se_deg),
                "noise_mm": clean(self.noise_mm)}


def fit_axes(moves: Sequence[tuple[str, float, Vec3]], noise_mm: float) -> AxisFit:
    """Scale per axis and the yaw offset (module doc) from pure translation moves:
    (axis moved alone, commanded mm, measured motion (lat, long, vert) mm). `noise_mm`:
    the standard deviation of one measured component (from the returns to home)."""
    noise = finite_number(noise_mm, "noise_mm", "mm")
    scale: dict[str, float] = {}
    scale_se: dict[str, float] = {}
    for axis in TRAVEL_AXES:
        i = TRAVEL_AXES.index(axis)
        pairs = [(c, m[i]) for a, c, m in moves if a == axis]
        if not pairs:
            continue
        c = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        ss = float(c @ c)
        scale[axis] = float(c @ y) / ss - 1.0
        scale_se[axis] = noise / math.sqrt(ss)
    lat = [(c, m) for a, c, m in moves if a == "lat"]
    lng = [(c, m) for a, c, m in moves if a == "long"]
    if not lat or not lng:
        return AxisFit(scale, scale_se, None, None, noise)
    # A lateral move c shows c sin(psi) along long; a long move c shows -c sin(psi) along
    # lateral: least squares of sin(psi) over both.
    num = sum(c * m[1] for c, m in lat) - sum(c * m[0] for c, m in lng)
    den = sum(c * c for c, _ in lat) + sum(c * c for c, _ in lng)
    psi = math.degrees(math.asin(max(-1.0, min(1.0, num / den))))
    return AxisFit(scale, scale_se, psi, math.degrees(noise / math.sqrt(den)), noise)


def expected_travel(m: TravelMeasurement, calibration: Calibration | None, home: Pose,
                    load_kg: float) -> Vec3:
    """The BB motion a travel should show: the commanded one without a calibration; under
    one, the predicted real translation turned by the predicted yaw offset at home."""
    cmd = m.commanded_vec
    if calibration is None or not (calibration.axis_scale or calibration.axis_offset
                                   or calibration.has_sag):
        return cmd
    from safety.qa_calibration import predict_real  # late: it imports safety.qa

    real_home = predict_real(home, calibration, load_kg)
    real_to = predict_real(home.plus(Pose(*cmd)), calibration, load_kg)
    d = np.array([real_to.lat - real_home.lat, real_to.long - real_home.long,
                  real_to.vert - real_home.vert])
    turned = rot_z(real_home.yaw - home.yaw) @ d
    return (float(turned[0]), float(turned[1]), float(turned[2]))
