"""The daily QA phantom: an acrylic cube with one radio-opaque ball bearing (BB).

A 160 mm cube of ~120 HU (PMMA) with a 4 mm BB of 3000 HU (a steel ball; the
CBCT's HU gain and offset bring it to ~2600-2900 HU, far above the cube's
~150 +- 25 HU) at a known offset from the cube's centre, and three small air
holes placed asymmetrically so that the cube's orientation is unambiguous to a
rigid registration. It is built from sim/phantom.py's primitives, so
`sim.imager.acquire_cbct` images it exactly as it images a patient (point
sampling of the analytic solid with ~1 mm soft edges, the CBCT's HU scale and
offset, cupping, shading, 25 HU noise, cylindrical field of view).

Frames. The phantom is defined like a patient in a planning frame (DICOM LPS,
mm) with its centre at the origin, imaged head-first supine (HFS) about
iso (0, 0, 0): the daily image frame of a QA CBCT is q = M^-1 (r - o) + 0 for
room point r seen through an imaging isocentre offset o (sim/room_imperfections.py),
with M the HFS matrix (room X = x, room Y = z, room Z = -y), i.e.
q = (rx - ox, -(rz - oz), ry - oy).

Placement ("perfect lasers"): the cube is laid on the table top aligned with
the lasers (the room axes) and with its centre at room point `centre_room`
(default the treatment isocentre, 0) while the couch is really at pose P0:
table-top point A(p) = F_P0^-1(M p + centre_room). So right after laying it,
the BB is at room point centre_room + bb_offset_mm exactly, whatever the couch's
imperfections; at real pose P it is at F_P(A(p_bb)), p_bb = M^-1 bb_offset_mm.
The room lays it once, at the treatment isocentre with the couch at the
description's start pose (its real pose before any move); op
`qa_phantom_place` lays it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field, StrictFloat

from safety.couch_model import CouchModel
from safety.geometry import orientation_matrix, pose_transform
from safety.pose import Pose
from sim.phantom import Phantom, Primitive
from sim.validation import Strict

if TYPE_CHECKING:
    from sim.imager import TableTop

CUBE_SIDE_MM = 160.0
CUBE_HU = 120.0
BB_DIAMETER_MM = 4.0
BB_HU = 3000.0
AIR_HOLE_HU = -1000.0
# Planning-frame centres and radii (mm) of the air holes: asymmetric, inside the cube,
# more than 60 mm from the default BB (a BB finder searching 40 mm around it sees none).
AIR_HOLES: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-45.0, 35.0, 50.0), 5.0),
    ((50.0, -40.0, -35.0), 4.0),
    ((-35.0, -50.0, -50.0), 6.0),
)
QA_ISO_MM: tuple[float, float, float] = (0.0, 0.0, 0.0)
QA_PATIENT_POSITION = "HFS"
_M = orientation_matrix(QA_PATIENT_POSITION)
# The BB stays well inside the cube (half side 80 mm minus the BB and a margin).
_BbCoord = Annotated[StrictFloat, Field(ge=-60.0, le=60.0, allow_inf_nan=False)]

Vec3 = tuple[float, float, float]


class QaPhantomSpec(Strict):
    """The room's QA phantom (sim/qa_phantom.py)."""

    bb_offset_mm: tuple[_BbCoord, _BbCoord, _BbCoord] = Field(
        default=(4.0, -3.0, 2.5), strict=False,
        description="BB position relative to the cube's centre: room x, y, z as the cube "
        "is laid (along the lasers)")


def _vec(v: Sequence[float] | np.ndarray) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def bb_planning_mm(spec: QaPhantomSpec) -> Vec3:
    """The BB centre in the phantom's planning frame: M^-1 bb_offset_mm."""
    return _vec(_M.T @ np.asarray(spec.bb_offset_mm, dtype=float))


def make_qa_phantom(spec: QaPhantomSpec | None = None) -> Phantom:
    """The cube, its air holes, then the BB (painting order: later ones win)."""
    spec = spec or QaPhantomSpec()
    half = CUBE_SIDE_MM / 2.0
    prims = [Primitive("box", (0.0, 0.0, 0.0), (half, half, half), CUBE_HU)]
    prims += [Primitive("ellipsoid", centre, (r, r, r), AIR_HOLE_HU) for centre, r in AIR_HOLES]
    r_bb = BB_DIAMETER_MM / 2.0
    prims.append(Primitive("ellipsoid", bb_planning_mm(spec), (r_bb, r_bb, r_bb), BB_HU))
    return Phantom(tuple(prims), name="qa_cube")


def default_pivot() -> Vec3:
    return _vec(CouchModel.default().pivot)


def lay_phantom(real_pose: Pose, centre_room: Sequence[float] = (0.0, 0.0, 0.0),
                pivot: Sequence[float] | None = None) -> np.ndarray:
    """Placement A (4x4, planning point -> table-top point) of the cube laid along the
    lasers with its centre at room point `centre_room` while the couch is really at
    `real_pose`: A(p) = F_P^-1(M p + centre_room)."""
    piv = np.asarray(default_pivot() if pivot is None else pivot, dtype=float)
    laid = np.eye(4)
    laid[:3, :3] = _M
    laid[:3, 3] = np.asarray(centre_room, dtype=float)
    placement: np.ndarray = np.linalg.inv(pose_transform(real_pose, piv)) @ laid
    return placement


def table_top_for(placement: np.ndarray) -> TableTop:
    """The couch table top touching the bottom face of the cube (its table-top z
    minus half a side; exact when the cube lies square on the table)."""
    from sim.imager import TableTop  # SimpleITK: not for whoever only reads a description

    return TableTop(surface_mm=float(placement[2, 3]) - CUBE_SIDE_MM / 2.0)


def room_point(placement: np.ndarray, real_pose: Pose, planning_mm: Sequence[float],
               pivot: Sequence[float] | None = None) -> Vec3:
    """Where the phantom's planning point is in the room at `real_pose`: F_P(A(p))."""
    piv = np.asarray(default_pivot() if pivot is None else pivot, dtype=float)
    h = pose_transform(real_pose, piv) @ placement
    return _vec(h[:3, :3] @ np.asarray(planning_mm, dtype=float) + h[:3, 3])


def bb_room_mm(placement: np.ndarray, real_pose: Pose, spec: QaPhantomSpec,
               pivot: Sequence[float] | None = None) -> Vec3:
    """Where the BB really is in the room (treatment-isocentre frame)."""
    return room_point(placement, real_pose, bb_planning_mm(spec), pivot)


def image_point(room_seen_mm: Sequence[float]) -> Vec3:
    """The daily-image (LPS) point of a QA CBCT at which a room point is seen; give it
    the room point already shifted by the imaging offset (`imaging_shift`)."""
    return _vec(_M.T @ np.asarray(room_seen_mm, dtype=float) + np.asarray(QA_ISO_MM))
