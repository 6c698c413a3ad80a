"""The room as solids: what each object is, what carries it and where it is.

Built from the validated configuration (`safety.collision_config`). Every
solid is a box or a cylinder placed in the frame of its carrier:

* the **gantry** (head, collimator, and the kV source, kV panel and EPID when
  extended): defined at gantry angle 0 and turned with the gantry, a
  right-handed rotation by the gantry angle about room +Y through the
  isocentre, `Ry(gantry)`. IEC 61217: at 0 the MV source is above the
  isocentre (beam from above); at 90 it is at +X, i.e. the gantry turns
  clockwise for an observer at the foot of the couch facing the gantry.
  This is the convention of the kV geometry (docs/imaging-2d-4d.md: source
  at SAD (sin a, 0, cos a)).
* the **table top** (couch top, patient envelope): defined in the table-top
  frame and placed by F_P (`safety.geometry.pose_transform`).
* the **couch base**: defined at the zero pose and placed by
  `Rz(yaw) * translate(0, 0, vert)` (plus lat and long for a base that
  travels): it turns with the couch yaw and rises with it, never pitches or
  rolls.

Imager arms that are parked are retracted into the gantry housing and are
not solids. An arm the PLC does not report parked counts as extended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from safety.collision_config import (
    BodyBox,
    CouchBase,
    GantryBox,
    PatientEnvelope,
    RoomGeometry,
)
from safety.geometry import rot_x, rot_y, rot_z
from safety.pose import Pose

GANTRY_HEAD = "gantry head"
COLLIMATOR = "collimator"
KV_SOURCE = "kV source"
KV_PANEL = "kV panel"
EPID = "EPID"
COUCH_TOP = "couch top"
COUCH_BASE = "couch base"
PATIENT = "patient"
PATIENT_ARMS = "patient's raised arms"


class ArmState(StrEnum):
    PARKED = "parked"
    EXTENDED = "extended"


@dataclass(frozen=True, slots=True)
class Arms:
    """The imager arms. Anything the PLC does not vouch for as parked is EXTENDED."""

    kv_source: ArmState = ArmState.PARKED
    kv_panel: ArmState = ArmState.PARKED
    epid: ArmState = ArmState.PARKED

    @classmethod
    def parked(cls) -> Arms:
        return cls()

    @classmethod
    def extended(cls) -> Arms:
        return cls(ArmState.EXTENDED, ArmState.EXTENDED, ArmState.EXTENDED)

    def __post_init__(self) -> None:
        for name in ("kv_source", "kv_panel", "epid"):
            if not isinstance(getattr(self, name), ArmState):
                # ValueError like every bad input here: one line naming the value.
                raise ValueError(  # noqa: TRY004
                    f"arm {name} state {getattr(self, name)!r} is not parked or extended")


class Carrier(StrEnum):
    GANTRY = "gantry"
    TABLE_TOP = "table top"
    BASE = "couch base"


@dataclass(frozen=True, slots=True)
class Box:
    size: tuple[float, float, float]  # full edge lengths along the solid's x, y, z, mm


@dataclass(frozen=True, slots=True)
class Cylinder:
    radius: float  # mm
    length: float  # mm, along the solid's z axis, centred


Shape = Box | Cylinder


def _readonly(m: np.ndarray) -> np.ndarray:
    m = np.array(m, dtype=float)
    m.flags.writeable = False
    return m


def _placement(rotation: np.ndarray, centre: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = centre
    return _readonly(out)


@dataclass(frozen=True, slots=True, eq=False)
class Solid:
    """One named convex solid; `placement` maps the solid's frame (centred on it)
    to its carrier's frame (a read-only 4x4)."""

    name: str
    shape: Shape
    carrier: Carrier
    placement: np.ndarray

    def half_extents(self) -> tuple[float, float, float]:
        """Half edges of the solid's bounding box in its own frame."""
        if isinstance(self.shape, Box):
            sx, sy, sz = self.shape.size
            return sx / 2, sy / 2, sz / 2
        r = self.shape.radius
        return r, r, self.shape.length / 2

    def corners(self) -> np.ndarray:
        """The 8 corners of the bounding box, in the carrier frame (8x3). Every point
        of the solid is in their convex hull, so a convex function of position is
        largest at one of them."""
        hx, hy, hz = self.half_extents()
        local = np.array([[sx * hx, sy * hy, sz * hz, 1.0]
                          for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        return (local @ self.placement.T)[:, :3]


def _gantry_box(name: str, part: GantryBox) -> Solid:
    radial = part.near_mm + part.thickness_mm / 2
    rot = rot_y(part.angle_offset_deg)
    # Local x across the ray, y along the gantry axis, z along the ray outward.
    centre = rot @ np.array([0.0, 0.0, radial]) + np.array([0.0, part.y_offset_mm, 0.0])
    return Solid(name, Box((part.width_mm, part.length_mm, part.thickness_mm)),
                 Carrier.GANTRY, _placement(rot, centre))


def gantry_solids(room: RoomGeometry, arms: Arms) -> tuple[Solid, ...]:
    """The gantry's solids at gantry angle 0 (carrier frame = room frame at angle 0)."""
    col = room.collimator
    out = [
        _gantry_box(GANTRY_HEAD, room.gantry_head),
        Solid(COLLIMATOR, Cylinder(col.diameter_mm / 2, col.length_mm), Carrier.GANTRY,
              _placement(np.eye(3), (0.0, 0.0, col.near_mm + col.length_mm / 2))),
    ]
    for name, part, state in ((KV_SOURCE, room.kv_source, arms.kv_source),
                              (KV_PANEL, room.kv_panel, arms.kv_panel),
                              (EPID, room.epid, arms.epid)):
        if state is ArmState.EXTENDED:
            out.append(_gantry_box(name, part))
    return tuple(out)


def couch_solids(room: RoomGeometry) -> tuple[Solid, ...]:
    """Couch top (table-top frame) and couch base (base frame: the room at the zero pose)."""
    top = room.couch_top
    top_solid = Solid(
        COUCH_TOP, Box((top.width_mm, top.length_mm, top.thickness_mm)), Carrier.TABLE_TOP,
        _placement(np.eye(3), (0.0, top.gantry_end_y_mm - top.length_mm / 2,
                               top.surface_z_mm - top.thickness_mm / 2)))
    return top_solid, _base_solid(room.couch_base)


def _base_solid(base: CouchBase) -> Solid:
    height = base.top_z_mm - base.bottom_z_mm
    return Solid(COUCH_BASE, Box((base.width_mm, base.depth_mm, height)), Carrier.BASE,
                 _placement(np.eye(3), (0.0, base.centre_y_mm, base.bottom_z_mm + height / 2)))


def patient_solids(room: RoomGeometry, patient: PatientEnvelope) -> tuple[Solid, ...]:
    """The patient envelope on the table top: the body, and the raised arms if up."""
    surface = room.couch_top.surface_z_mm
    head, feet = patient.head_y_mm, patient.feet_y_mm
    length = abs(head - feet)
    mid_y = (head + feet) / 2
    body = patient.body
    if isinstance(body, BodyBox):
        solid = Solid(PATIENT, Box((body.width_mm, length, body.height_mm)), Carrier.TABLE_TOP,
                      _placement(np.eye(3), (0.0, mid_y, surface + body.height_mm / 2)))
    else:
        r = body.diameter_mm / 2
        # A cylinder's axis is its local z; Rx(-90) lays it along +Y.
        solid = Solid(PATIENT, Cylinder(r, length), Carrier.TABLE_TOP,
                      _placement(rot_x(-90.0), (0.0, mid_y, surface + r)))
    if patient.arms == "down":
        return (solid,)
    arms = patient.arms_up
    toward_head = math.copysign(1.0, head - feet)
    y_a = head - toward_head * arms.toward_feet_mm
    y_b = head + toward_head * arms.beyond_head_mm
    arms_solid = Solid(
        PATIENT_ARMS, Box((arms.width_mm, abs(y_b - y_a), arms.height_mm)), Carrier.TABLE_TOP,
        _placement(np.eye(3), (0.0, (y_a + y_b) / 2, surface + arms.height_mm / 2)))
    return solid, arms_solid


def pieces(solid: Solid, max_length_mm: float) -> tuple[Solid, ...]:
    """The solid cut across the carrier's Y axis into pieces no longer than
    `max_length_mm` (same name, same carrier; their union is the solid).

    Why: the path check bounds how far a point can move by its distance from the
    axes the couch turns about; a short piece near the isocentre has a short
    lever arm, where the whole 2 m couch top would have the length of its far end.
    """
    rot = solid.placement[:3, :3]
    if isinstance(solid.shape, Box):
        axis = int(np.argmax(np.abs(rot[1, :])))
        length = solid.shape.size[axis]
    elif abs(rot[1, 2]) > 0.99:  # a cylinder lying along Y is cut along its axis
        axis, length = 2, solid.shape.length
    else:
        return (solid,)
    n = max(1, math.ceil(length / max_length_mm - 1e-9))
    if n == 1:
        return (solid,)
    step = length / n
    out = []
    for i in range(n):
        offset = np.zeros(3)
        offset[axis] = -length / 2 + (i + 0.5) * step
        shape: Shape
        if isinstance(solid.shape, Box):
            size = list(solid.shape.size)
            size[axis] = step
            shape = Box((size[0], size[1], size[2]))
        else:
            shape = Cylinder(solid.shape.radius, step)
        out.append(Solid(solid.name, shape, solid.carrier,
                         _placement(rot, solid.placement[:3, 3] + rot @ offset)))
    return tuple(out)


def table_top_transform(pose: Pose, pivot: np.ndarray) -> np.ndarray:
    """F_P as `safety.geometry.pose_transform`, written out with scalars: it runs for
    every sample of every path check (a test pins it to pose_transform)."""
    cy_, sy_ = math.cos(math.radians(pose.yaw)), math.sin(math.radians(pose.yaw))
    cp, sp = math.cos(math.radians(pose.pitch)), math.sin(math.radians(pose.pitch))
    cr, sr = math.cos(math.radians(pose.roll)), math.sin(math.radians(pose.roll))
    # A = Rx(pitch) Ry(roll)
    a = ((cr, 0.0, sr), (sp * sr, cp, -sp * cr), (-cp * sr, sp, cp * cr))
    c0, c1, c2 = float(pivot[0]), float(pivot[1]), float(pivot[2])
    # u = c - A c + t, then everything turned by Rz(yaw)
    u = [c - (r[0] * c0 + r[1] * c1 + r[2] * c2) + t
         for c, r, t in zip((c0, c1, c2), a, (pose.lat, pose.long, pose.vert))]
    rz = ((cy_, -sy_), (sy_, cy_))
    rows = [[rz[0][0] * a[0][k] + rz[0][1] * a[1][k] for k in range(3)]
            + [rz[0][0] * u[0] + rz[0][1] * u[1]],
            [rz[1][0] * a[0][k] + rz[1][1] * a[1][k] for k in range(3)]
            + [rz[1][0] * u[0] + rz[1][1] * u[1]],
            [a[2][0], a[2][1], a[2][2], u[2]],
            [0.0, 0.0, 0.0, 1.0]]
    return np.array(rows)


def gantry_transform(gantry_deg: float) -> np.ndarray:
    """4x4: gantry frame (room frame at angle 0) -> room, Ry(gantry) about the isocentre."""
    out = np.eye(4)
    out[:3, :3] = rot_y(gantry_deg)
    return out


def base_transform(pose: Pose, moves_with_lat_long: bool) -> np.ndarray:
    """4x4: base frame -> room, Rz(yaw) * translate(lat?, long?, vert)."""
    out = np.eye(4)
    rz = rot_z(pose.yaw)
    t = np.array([pose.lat, pose.long, pose.vert]) if moves_with_lat_long else \
        np.array([0.0, 0.0, pose.vert])
    out[:3, :3] = rz
    out[:3, 3] = rz @ t
    return out


def carrier_transform(carrier: Carrier, pose: Pose, pivot: np.ndarray,
                      base_moves_with_lat_long: bool) -> np.ndarray:
    """4x4 carrier frame -> room for a couch-carried solid at `pose`."""
    if carrier is Carrier.TABLE_TOP:
        return table_top_transform(pose, pivot)
    if carrier is Carrier.BASE:
        return base_transform(pose, base_moves_with_lat_long)
    raise ValueError(f"{carrier} is not carried by the couch")
