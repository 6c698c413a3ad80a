"""Couch sag against extension and load (commissioning, issue 16).

The model (the simulator's, sim/room_imperfections.py, term for term):

    ext_m       = long / 1000                  (the couch's reported long, mm; signed)
    vert drop   = (a + b * load_kg / 100) * ext_m      mm,  real vert  -= vert drop
    pitch drop  = (c + d * load_kg / 100) * ext_m      deg, real pitch -= pitch drop

a mm/m, b mm/m per 100 kg, c deg/m, d deg/m per 100 kg. A drop is positive when
the table top is lower (vert) or its gantry end dips (pitch) more than commanded.

`fit_sag` fits (a, b) and (c, d) by linear least squares to measured points and
refuses points that cannot determine them. TG-142 Table III (annual) holds table
top sag to 2 mm from baseline (safety.qa_tolerances.Profile.sag_mm).

Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safety.qa_tolerances import finite_number

__all__ = ["SagModel", "SagPoint", "fit_sag"]

MIN_POINTS = 3
# Above this condition number the design cannot separate the unloaded and the
# load terms (near-collinear points).
MAX_CONDITION = 1e8
# Loads differ when they differ by more than this (kg); extensions by this (mm):
# closer ones cannot separate the terms of the model.
LOAD_EPSILON_KG = 1.0
EXTENSION_EPSILON_MM = 1.0


def _clean(v: float) -> float:
    return round(v, 9) + 0.0


@dataclass(frozen=True, slots=True)
class SagPoint:
    """One measurement: at extension `extension_mm` (couch long, mm) with `load_kg` on the
    table top, the table top was `vert_sag_mm` lower and its pitch `pitch_deg` lower
    (gantry end down) than commanded."""

    extension_mm: float
    load_kg: float
    vert_sag_mm: float
    pitch_deg: float

    def __post_init__(self) -> None:
        for name, unit in (("extension_mm", "mm"), ("load_kg", "kg"), ("vert_sag_mm", "mm"),
                           ("pitch_deg", "deg")):
            object.__setattr__(self, name, finite_number(getattr(self, name), name, unit))
        if self.load_kg < 0:
            raise ValueError(f"load_kg {self.load_kg:g} kg must not be negative (limit 0 kg)")

    def to_json(self) -> dict[str, float]:
        return {"extension_mm": self.extension_mm, "load_kg": self.load_kg,
                "vert_sag_mm": self.vert_sag_mm, "pitch_deg": self.pitch_deg}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SagPoint:
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a sag point must be an object, got {type(d).__name__}")
        missing = [k for k in ("extension_mm", "load_kg", "vert_sag_mm", "pitch_deg")
                   if k not in d]
        if missing:
            raise ValueError(f"sag point is missing {', '.join(missing)}")
        return cls(d["extension_mm"], d["load_kg"], d["vert_sag_mm"], d["pitch_deg"])


@dataclass(frozen=True, slots=True)
class SagModel:
    """a mm/m, b mm/m per 100 kg, c deg/m, d deg/m per 100 kg (module doc); rms_mm and
    rms_deg: root-mean-square residuals of the fit (0 for a model not fitted)."""

    a: float
    b: float
    c: float
    d: float
    rms_mm: float = 0.0
    rms_deg: float = 0.0

    def __post_init__(self) -> None:
        for name, unit in (("a", "mm/m"), ("b", "mm/m per 100 kg"), ("c", "deg/m"),
                           ("d", "deg/m per 100 kg"), ("rms_mm", "mm"), ("rms_deg", "deg")):
            object.__setattr__(self, name, finite_number(getattr(self, name), f"sag {name}", unit))
        for name in ("rms_mm", "rms_deg"):
            if getattr(self, name) < 0:
                raise ValueError(f"sag {name} {getattr(self, name):g} must not be negative")

    @property
    def is_zero(self) -> bool:
        return self.a == 0 and self.b == 0 and self.c == 0 and self.d == 0

    def predict(self, ext_mm: float, load_kg: float) -> tuple[float, float]:
        """(vert drop mm, pitch drop deg) at couch long `ext_mm` with `load_kg` on it."""
        e = finite_number(ext_mm, "extension", "mm") / 1000.0
        load = finite_number(load_kg, "load", "kg")
        if load < 0:
            raise ValueError(f"load {load:g} kg must not be negative (limit 0 kg)")
        return ((self.a + self.b * load / 100.0) * e, (self.c + self.d * load / 100.0) * e)

    def to_json(self) -> dict[str, float]:
        return {"a": _clean(self.a), "b": _clean(self.b), "c": _clean(self.c),
                "d": _clean(self.d), "rms_mm": _clean(self.rms_mm),
                "rms_deg": _clean(self.rms_deg)}

    def as_imperfection(self) -> dict[str, float]:
        """The simulator's field names (RoomDescription imperfections.sag)."""
        return {"mm_per_m": self.a, "mm_per_m_per_100kg": self.b, "deg_per_m": self.c,
                "deg_per_m_per_100kg": self.d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SagModel:
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a sag model must be an object, got {type(d).__name__}")
        missing = [k for k in ("a", "b", "c", "d") if k not in d]
        if missing:
            raise ValueError(f"sag model is missing {', '.join(missing)}")
        return cls(d["a"], d["b"], d["c"], d["d"], d.get("rms_mm", 0.0), d.get("rms_deg", 0.0))


def fit_sag(points: Sequence[SagPoint]) -> SagModel:
    """Least-squares (a, b, c, d) of the module's model. ValueError (one line) for too
    few points or points that cannot separate the terms: every point needs the same
    model, so at least two different non-zero extensions and two different loads
    among the points with a non-zero extension."""
    pts = [p if isinstance(p, SagPoint) else SagPoint(*p) for p in points]
    if len(pts) < MIN_POINTS:
        raise ValueError(f"a sag fit needs at least {MIN_POINTS} points, got {len(pts)}")
    ext = np.array([p.extension_mm for p in pts]) / 1000.0
    load = np.array([p.load_kg for p in pts]) / 100.0
    moved = np.abs(ext) * 1000.0 > EXTENSION_EPSILON_MM
    extensions = _distinct(ext[moved] * 1000.0, EXTENSION_EPSILON_MM)
    if len(extensions) < 2:
        found = ", ".join(f"{v:g}" for v in extensions) or "none"
        raise ValueError(
            f"a sag fit needs points at two or more different non-zero extensions "
            f"(found: {found} mm): sag is fitted as linear in extension")
    loads = _distinct(load[moved] * 100.0, LOAD_EPSILON_KG)
    if len(loads) < 2:
        raise ValueError(
            f"a sag fit needs two or more different loads at non-zero extensions (found only "
            f"{loads[0]:g} kg): the load terms cannot be told from the unloaded ones")
    x = np.column_stack([ext, ext * load])
    sv = np.linalg.svd(x, compute_uv=False)
    if not sv[-1] > 0 or sv[0] / sv[-1] > MAX_CONDITION:
        raise ValueError("sag points are degenerate: the unloaded and load terms cannot be "
                         "separated (measure at more extensions and loads)")
    vert = np.array([p.vert_sag_mm for p in pts])
    pitch = np.array([p.pitch_deg for p in pts])
    (a, b), *_ = np.linalg.lstsq(x, vert, rcond=None)
    (c, d), *_ = np.linalg.lstsq(x, pitch, rcond=None)
    rms_mm = math.sqrt(float(np.mean((vert - x @ np.array([a, b])) ** 2)))
    rms_deg = math.sqrt(float(np.mean((pitch - x @ np.array([c, d])) ** 2)))
    return SagModel(float(a), float(b), float(c), float(d), rms_mm, rms_deg)


def _distinct(values: np.ndarray, eps: float) -> list[float]:
    out: list[float] = []
    for v in sorted(float(x) for x in values):
        if not out or v - out[-1] > eps:
            out.append(v)
    return out
