"""An imperfect simulated room: where the couch really is, and where the CBCT sees it.

Simulator only, and off unless a room description asks (`"imperfections"` in
sim/rooms/imperfect.json; the default room has none and is exactly perfect).
The couch controller keeps reporting the pose it believes (its encoders, the
`reported` pose below); the table top is really somewhere else, and the
imaging and the simulator's truth use where it really is. The model, exactly
(every term 0 by default; axes a in lat, long, vert (mm), yaw, pitch, roll (deg)):

    real.a      = reported.a * (1 + axis_scale[a]) + axis_offset[a]          (1)
    ext_m       = reported.long / 1000                                       (2)
    real.vert  -= (sag.mm_per_m  + sag.mm_per_m_per_100kg  * load_kg / 100) * ext_m
    real.pitch -= (sag.deg_per_m + sag.deg_per_m_per_100kg * load_kg / 100) * ext_m
    real.a     += e.a,  e ~ N(0, repeatability_mm) for lat, long, vert,
                        N(0, repeatability_deg) for yaw, pitch, roll           (3)

(1) the real travel of an axis is its reported travel from 0 times (1 + scale),
plus a constant offset; (2) the extension is the *reported* long in metres,
linear and signed (toward the gantry is positive; a retracted couch, long < 0,
rises by the same rule); (3) the repeatability error is drawn once per couch
move (`RealCouch`): when the controller executes a GO or a JOG a new error is
drawn and it holds until the next one, from a generator seeded by (room seed,
move count), so the same room replays the same errors. The real pose then
maps the table top to the room through F_P of docs/geometry.md (pivot
(0, 0, -150) mm), so a sag pitch also lowers points away from the pivot.

The imaging isocentre sits at `imaging_iso_offset_mm` o (room frame) from the
treatment isocentre. A CBCT is reconstructed about the imaging isocentre but
labelled as if it were the treatment isocentre, so every object appears
shifted by -o: room point r is seen at the room-labelled point r - o
(`imaging_shift`), i.e. at daily-image point M^-1 (r - o) + iso. An object at
the treatment isocentre appears at -o. The simulator renders this exactly by
imaging at `imaging_pose(real)`, the pose whose F equals F_real - o.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StrictFloat, field_validator

from safety.geometry import rot_z
from safety.pose import AXES, ROTATION_AXES, Pose
from sim.validation import Strict

Axis = Literal["lat", "long", "vert", "yaw", "pitch", "roll"]
_Finite = Annotated[StrictFloat, Field(allow_inf_nan=False)]
_IsoOffset = Annotated[StrictFloat, Field(ge=-5.0, le=5.0, allow_inf_nan=False)]

# Plausible bounds: a commissioned couch is well inside these; a room outside
# them is a broken room, not an imperfect one.
MAX_SCALE = 0.05  # fraction of travel (5 %)
MAX_OFFSET = {"mm": 5.0, "deg": 1.0}
MAX_LOAD_KG = 300.0
# Seed stream tag of the repeatability draws (independent of every other draw).
REPEATABILITY_STREAM = 16
# Controller commands that start a move (each one is an arrival: a new error).
MOVE_COMMANDS = ("GO", "JOG")


def _unit(axis: str) -> str:
    return "deg" if axis in ROTATION_AXES else "mm"


class Sag(Strict):
    """Couch sag, linear in the extension (long) and the load on the table top."""

    mm_per_m: float = Field(default=0.0, ge=0.0, le=10.0,
                            description="vert drop per metre of extension, unloaded")
    mm_per_m_per_100kg: float = Field(default=0.0, ge=0.0, le=10.0,
                                      description="more vert drop per metre per 100 kg")
    deg_per_m: float = Field(default=0.0, ge=0.0, le=1.0,
                             description="pitch (nose down) per metre of extension, unloaded")
    deg_per_m_per_100kg: float = Field(default=0.0, ge=0.0, le=1.0,
                                       description="more pitch per metre per 100 kg")

    def at(self, long_mm: float, load_kg: float) -> tuple[float, float]:
        """(vert drop mm, pitch drop deg) at this reported long and load."""
        ext_m = long_mm / 1000.0
        return ((self.mm_per_m + self.mm_per_m_per_100kg * load_kg / 100.0) * ext_m,
                (self.deg_per_m + self.deg_per_m_per_100kg * load_kg / 100.0) * ext_m)


class Imperfections(Strict):
    """What is wrong with a simulated room (sim only). All 0: a perfect room."""

    imaging_iso_offset_mm: tuple[_IsoOffset, _IsoOffset, _IsoOffset] = Field(
        default=(0.0, 0.0, 0.0), strict=False,
        description="room x, y, z of the imaging isocentre relative to the treatment "
        "isocentre; the CBCT shows every object shifted by minus this")
    axis_scale: dict[Axis, _Finite] = Field(
        default_factory=dict, description="axis -> fraction: the real travel is "
        f"reported * (1 + fraction); within +-{MAX_SCALE:g}")
    axis_offset: dict[Axis, _Finite] = Field(
        default_factory=dict, description="axis -> mm or deg added to the real pose; within "
        f"+-{MAX_OFFSET['mm']:g} mm / +-{MAX_OFFSET['deg']:g} deg")
    sag: Sag = Sag()
    load_kg: float = Field(default=0.0, ge=0.0, le=MAX_LOAD_KG,
                           description="load on the table top at start (op couch_load changes it)")
    repeatability_mm: float = Field(default=0.0, ge=0.0, le=1.0,
                                    description="sd of the per-move error of lat, long, vert")
    repeatability_deg: float = Field(default=0.0, ge=0.0, le=0.5,
                                     description="sd of the per-move error of yaw, pitch, roll")

    @field_validator("axis_scale")
    @classmethod
    def _plausible_scale(cls, v: dict[str, float]) -> dict[str, float]:
        for axis, f in v.items():
            if abs(f) > MAX_SCALE:
                raise ValueError(f"{axis}: scale {f!r} is outside +-{MAX_SCALE:g} "
                                 "(a fraction: 0.008 is +0.8 %)")
        return v

    @field_validator("axis_offset")
    @classmethod
    def _plausible_offset(cls, v: dict[str, float]) -> dict[str, float]:
        for axis, off in v.items():
            unit = _unit(axis)
            if abs(off) > MAX_OFFSET[unit]:
                raise ValueError(f"{axis}: offset {off!r} {unit} is outside "
                                 f"+-{MAX_OFFSET[unit]:g} {unit}")
        return v

    def scale(self, axis: str) -> float:
        return float(next((v for k, v in self.axis_scale.items() if k == axis), 0.0))

    def offset(self, axis: str) -> float:
        return float(next((v for k, v in self.axis_offset.items() if k == axis), 0.0))

    def true_pose(self, reported: Pose, load_kg: float,
                  rng: np.random.Generator | None = None) -> Pose:
        """The real table-top pose when the controller reports `reported` (module doc,
        (1)-(3)). Without `rng`, no repeatability error; with one, one draw of six
        normals (lat, long, vert, yaw, pitch, roll order)."""
        real = {a: reported.get(a) * (1.0 + self.scale(a)) + self.offset(a) for a in AXES}
        vert_drop, pitch_drop = self.sag.at(reported.long, load_kg)
        real["vert"] -= vert_drop
        real["pitch"] -= pitch_drop
        if rng is not None and (self.repeatability_mm > 0 or self.repeatability_deg > 0):
            sd = [self.repeatability_deg if a in ROTATION_AXES else self.repeatability_mm
                  for a in AXES]
            error = rng.normal(0.0, 1.0, len(AXES)) * np.asarray(sd)
            for a, e in zip(AXES, error):
                real[a] += float(e)
        return Pose(**real)

    def imaging_shift(self, room_mm: Iterable[float]) -> tuple[float, float, float]:
        """Where room point r appears in a CBCT, in room coordinates as the image labels
        them: r - imaging_iso_offset_mm."""
        r = [float(v) for v in room_mm]
        o = self.imaging_iso_offset_mm
        return (r[0] - o[0], r[1] - o[1], r[2] - o[2])

    def imaging_pose(self, real: Pose) -> Pose:
        """The pose whose F equals F_real - o: a CBCT rendered at it shows the room as the
        offset imaging isocentre does. F_P(x) = Rz(yaw) (... + t), so t' = t - Rz(yaw)^T o."""
        o = np.asarray(self.imaging_iso_offset_mm, dtype=float)
        if not o.any():
            return real
        d = rot_z(real.yaw).T @ o
        return Pose(real.lat - float(d[0]), real.long - float(d[1]), real.vert - float(d[2]),
                    real.yaw, real.pitch, real.roll)


def true_pose(imperfections: Imperfections | None, reported: Pose, load_kg: float,
              rng: np.random.Generator | None = None) -> Pose:
    """`Imperfections.true_pose`, and the reported pose itself (the same object) in a
    perfect room."""
    if imperfections is None:
        return reported
    return imperfections.true_pose(reported, load_kg, rng)


class RealCouch:
    """The couch of one running room as it really is: its imperfections, the load on
    it now, and the repeatability error of the current move."""

    def __init__(self, imperfections: Imperfections | None, seed: int) -> None:
        self.imperfections = imperfections
        self.seed = seed
        self.load_kg = imperfections.load_kg if imperfections is not None else 0.0

    @staticmethod
    def moves(executed: Iterable[Any]) -> int:
        """How many moves the controller has started (its executed GO and JOG records)."""
        return sum(1 for e in executed if e.kind in MOVE_COMMANDS)

    def rng(self, move: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, REPEATABILITY_STREAM, move])

    def pose(self, reported: Pose, move: int) -> Pose:
        """The real pose during/after move number `move` (0: before any move)."""
        if self.imperfections is None:
            return reported
        return self.imperfections.true_pose(reported, self.load_kg, self.rng(move))

    def as_dict(self) -> dict[str, Any]:
        imp = self.imperfections
        return {"imperfections": None if imp is None else imp.model_dump(mode="json"),
                "couch_load_kg": self.load_kg}


def pose_error(real: Pose, reported: Pose) -> dict[str, float]:
    """real - reported per axis (what the imperfections did), rounded to 1e-9."""
    return {a: round(real.get(a) - reported.get(a), 9) for a in AXES}
