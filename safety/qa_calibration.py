"""Couch and imaging calibration from QA: what it is, how it is proposed and applied.

The couch model (the simulator's, sim/room_imperfections.py (1)-(2), term for term;
axes a in lat, long, vert mm and yaw, pitch, roll deg):

    real.a      = reported.a * (1 + scale[a]) + offset[a]
    real.vert  -= sag vert drop (reported.long, load)      (safety.qa_sag)
    real.pitch -= sag pitch drop (reported.long, load)

`predict_real` is this model; `compensate` its exact inverse: the reported pose
to send the couch to so that it really ends up at `target`:

    reported.long  = (target.long - offset.long) / (1 + scale.long)     (and lat, yaw, roll)
    reported.vert  = (target.vert + vert drop(reported.long) - offset.vert) / (1 + scale.vert)
    reported.pitch = (target.pitch + pitch drop(reported.long) - offset.pitch) / (1 + scale.pitch)

(the extension is the reported long, so long is solved first). The imaging isocentre
offset o (room X, Y, Z, mm: where the imaging isocentre is relative to the treatment
isocentre) makes a CBCT show every object shifted by -o; `correct_registration_shift`
and `correct_registration_matrix` add it back.

With `Calibration.identity()` every function returns its input exactly: the same
object for poses, the same float values for shifts and matrices. A term that is 0
is never applied, so a calibration leaves untouched every axis it does not correct.

`safety.qa_calibration_proposal.propose_calibration` makes a proposal from a daily
QA result (its own module: it reads safety.qa's results, and safety.qa judges a
daily QA under a calibration of this module; one direction each, no import cycle).

Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safety.geometry import PatientPosition, orientation_matrix
from safety.pose import AXES, UNITS, Pose
from safety.qa_sag import SagModel
from safety.qa_tolerances import finite_number

__all__ = [
    "Calibration",
    "compensate",
    "correct_registration_matrix",
    "correct_registration_shift",
    "predict_real",
]

Vec3 = tuple[float, float, float]

# Plausible bounds (the simulator's too): a couch or an imager outside them needs
# service, not a calibration.
MAX_SCALE = 0.05  # fraction of travel
MAX_OFFSET = {"mm": 5.0, "deg": 1.0}
MAX_ISO_OFFSET_MM = 5.0
# A proposed scale smaller than this (0.01 %) is not worth applying.
MIN_SCALE = 1e-4
# A proposed scale must stand this many standard errors above the measurement noise.
SCALE_SIGNIFICANCE = 3.0


def _axis_map(value: Any, name: str, kind: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{name} must map couch axes to numbers, got {type(value).__name__}")
    out: dict[str, float] = {}
    for axis, v in value.items():
        if axis not in AXES:
            raise ValueError(f"{name}: unknown couch axis {axis!r} (expected one of "
                             f"{', '.join(AXES)})")
        unit = "fraction" if kind == "scale" else UNITS[axis]
        f = finite_number(v, f"{name} {axis}", unit)
        if kind == "scale" and not abs(f) <= MAX_SCALE:
            raise ValueError(f"{name} {axis} {f:g} is outside +-{MAX_SCALE:g} (a fraction of "
                             f"travel: 0.008 is +0.8 %)")
        if kind == "offset" and not abs(f) <= MAX_OFFSET[unit]:
            raise ValueError(f"{name} {axis} {f:g} {unit} is outside "
                             f"+-{MAX_OFFSET[unit]:g} {unit}")
        if f != 0.0:  # a zero term is no term: keeps identity exact
            out[str(axis)] = f
    return out


@dataclass(frozen=True)
class Calibration:
    imaging_iso_offset_mm: Vec3 = (0.0, 0.0, 0.0)
    axis_scale: Mapping[str, float] = field(default_factory=dict)
    axis_offset: Mapping[str, float] = field(default_factory=dict)
    sag: SagModel | None = None
    version: int = 0  # 0: no calibration

    def __post_init__(self) -> None:
        o = self.imaging_iso_offset_mm
        if isinstance(o, (str, bytes)) or not isinstance(o, (Sequence, np.ndarray)) or len(o) != 3:
            raise ValueError(f"imaging_iso_offset_mm must be 3 numbers (x, y, z mm), got {o!r}")
        iso = tuple(finite_number(v, f"imaging_iso_offset_mm {k}", "mm") for k, v in zip("xyz", o))
        for k, v in zip("xyz", iso):
            if not abs(v) <= MAX_ISO_OFFSET_MM:
                raise ValueError(f"imaging_iso_offset_mm {k} {v:g} mm is outside "
                                 f"+-{MAX_ISO_OFFSET_MM:g} mm")
        object.__setattr__(self, "imaging_iso_offset_mm", iso)
        object.__setattr__(self, "axis_scale", _axis_map(self.axis_scale, "axis_scale", "scale"))
        object.__setattr__(self, "axis_offset",
                           _axis_map(self.axis_offset, "axis_offset", "offset"))
        if self.sag is not None and not isinstance(self.sag, SagModel):
            raise ValueError(f"sag must be a SagModel or None, got {type(self.sag).__name__}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"calibration version must be an integer >= 0, got {self.version!r}")

    @classmethod
    def identity(cls) -> Calibration:
        return cls()

    def scale(self, axis: str) -> float:
        return self.axis_scale.get(axis, 0.0)

    def offset(self, axis: str) -> float:
        return self.axis_offset.get(axis, 0.0)

    @property
    def has_sag(self) -> bool:
        return self.sag is not None and not self.sag.is_zero

    @property
    def is_identity(self) -> bool:
        return (not self.axis_scale and not self.axis_offset and not self.has_sag
                and not any(self.imaging_iso_offset_mm))

    def to_json(self) -> dict[str, Any]:
        return {
            "imaging_iso_offset_mm": list(self.imaging_iso_offset_mm),
            "axis_scale": dict(self.axis_scale),
            "axis_offset": dict(self.axis_offset),
            "sag": None if self.sag is None else self.sag.to_json(),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Calibration:
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a calibration must be an object, got {type(d).__name__}")
        extra = sorted(set(d) - {"imaging_iso_offset_mm", "axis_scale", "axis_offset", "sag",
                                 "version"})
        if extra:
            raise ValueError(f"calibration has unknown fields: {', '.join(map(str, extra))}")
        sag = d.get("sag")
        return cls(
            tuple(d.get("imaging_iso_offset_mm", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            d.get("axis_scale") or {},
            d.get("axis_offset") or {},
            None if sag is None else SagModel.from_json(sag),
            d.get("version", 0),
        )


def _check_target(target: Pose, what: str) -> None:
    if not isinstance(target, Pose):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{what} must be a couch pose, got {type(target).__name__}")
    for a in AXES:
        finite_number(target.get(a), f"{what} {a}", UNITS[a])


def _load(load_kg: float) -> float:
    load = finite_number(load_kg, "load_kg", "kg")
    if load < 0:
        raise ValueError(f"load_kg {load:g} kg must not be negative (limit 0 kg)")
    return load


def _inverse(value: float, cal: Calibration, axis: str) -> float:
    off = cal.offset(axis)
    if off != 0.0:
        value = value - off
    scale = cal.scale(axis)
    if scale != 0.0:
        value = value / (1.0 + scale)
    return value


def _forward(value: float, cal: Calibration, axis: str) -> float:
    scale = cal.scale(axis)
    if scale != 0.0:
        value = value * (1.0 + scale)
    off = cal.offset(axis)
    if off != 0.0:
        value = value + off
    return value


def compensate(target: Pose, cal: Calibration, load_kg: float) -> Pose:
    """The reported pose to command so that the couch really reaches `target` (the
    inverse of `predict_real`; module doc). Identity calibration: `target` itself."""
    _check_target(target, "target")
    load = _load(load_kg)
    if not cal.axis_scale and not cal.axis_offset and not cal.has_sag:
        return target
    out = {a: _inverse(target.get(a), cal, a) for a in ("lat", "long", "yaw", "roll")}
    vert, pitch = target.vert, target.pitch
    if cal.has_sag:
        assert cal.sag is not None
        vert_drop, pitch_drop = cal.sag.predict(out["long"], load)
        if vert_drop != 0.0:
            vert = vert + vert_drop
        if pitch_drop != 0.0:
            pitch = pitch + pitch_drop
    out["vert"] = _inverse(vert, cal, "vert")
    out["pitch"] = _inverse(pitch, cal, "pitch")
    return Pose(**out)


def predict_real(reported: Pose, cal: Calibration, load_kg: float) -> Pose:
    """Where the couch really is when it reports `reported` (the module's model, no
    repeatability error). Identity calibration: `reported` itself."""
    _check_target(reported, "reported pose")
    load = _load(load_kg)
    if not cal.axis_scale and not cal.axis_offset and not cal.has_sag:
        return reported
    out = {a: _forward(reported.get(a), cal, a) for a in AXES}
    if cal.has_sag:
        assert cal.sag is not None
        vert_drop, pitch_drop = cal.sag.predict(reported.long, load)
        out["vert"] -= vert_drop
        out["pitch"] -= pitch_drop
    return Pose(**out)


def correct_registration_shift(shift_mm: Sequence[float], cal: Calibration) -> Vec3:
    """A room-frame shift (X, Y, Z mm) measured by imaging (apparent position minus
    reference) corrected for the imaging isocentre offset: shift + o. Identity: the
    same values."""
    if isinstance(shift_mm, (str, bytes)) or len(shift_mm) != 3:
        raise ValueError(f"shift_mm must be 3 numbers (x, y, z mm), got {shift_mm!r}")
    s = tuple(finite_number(v, f"shift_mm {k}", "mm") for k, v in zip("xyz", shift_mm))
    o = cal.imaging_iso_offset_mm
    return (
        s[0] + o[0] if o[0] != 0.0 else s[0],
        s[1] + o[1] if o[1] != 0.0 else s[1],
        s[2] + o[2] if o[2] != 0.0 else s[2],
    )


def correct_registration_matrix(matrix: Any, patient_position: PatientPosition | str,
                                cal: Calibration) -> np.ndarray:
    """An ITK registration (fixed = planning, moving = daily CBCT) corrected for the
    imaging isocentre offset: every daily-image point moves by M^T o, so the correction
    planned from it (docs/geometry.md, D(r) + o) is the true one. Identity: a copy of
    the same values."""
    t = np.array(matrix, dtype=float)
    if t.shape != (4, 4) or not np.isfinite(t).all():
        raise ValueError("registration matrix must be a finite 4x4 array")
    o = np.asarray(cal.imaging_iso_offset_mm, dtype=float)
    if not o.any():
        return t
    m = orientation_matrix(patient_position)
    t[:3, 3] = t[:3, 3] + m.T @ o
    return t
