"""QA geometry: from what two images of the QA phantom show to how the couch moved.

A QA image is compared with the baseline image through the phantom's fiducials (a
least-squares rigid fit, `rigid_fit`); the fit is turned into the room motion of the
table top (`room_shift_from_registration`) and that into the couch delta from the QA
home pose (`couch_delta_from_room_shift`), which safety.qa compares with what was
commanded. The BB in the baseline gives the imaging-isocentre offset
(`iso_offset_from_bb`). Frames and conventions: safety.qa's module doc and
docs/geometry.md.

Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safety.correction import validate_registration_matrix
from safety.geometry import (
    PatientPosition,
    decompose_rotation,
    orientation_matrix,
    pose_rotation,
    pose_transform,
    rot_z,
    rotation_from_angles,
)
from safety.pose import Pose
from safety.qa_tolerances import finite_number
from safety.qa_values import Vec3
from safety.qa_values import pose_of as _pose
from safety.qa_values import vec3 as _vec3
from safety.qa_values import wrap_deg as _wrap_deg

__all__ = [
    "RigidFit",
    "couch_delta_from_room_shift",
    "couch_motion_from_registration",
    "iso_offset_from_bb",
    "rigid_fit",
    "room_shift_for_couch_delta",
    "room_shift_from_registration",
]


def room_shift_from_registration(
    matrix: Any, patient_position: PatientPosition | str, centre_mm: Sequence[float],
) -> Pose:
    """How the table top moved between the baseline and a later image, in the room.

    `matrix`: rigid 4x4 ITK fixed -> moving, fixed = baseline image, moving = the later
    image, both DICOM LPS (the phantom material at baseline point q is at T(q) in the
    later image). `centre_mm`: the point whose translation is reported (the BB or the
    phantom centre), in the baseline image's DICOM frame.

    Returns lat, long, vert = M (T(c) - c), the translation of that point along IEC
    X, Y, Z (mm), and yaw, pitch, roll = the rotation M R M^T decomposed as
    Rz(yaw) Rx(pitch) Ry(roll) (deg). An imaging-iso offset cancels (it shifts both
    images alike).
    """
    t = validate_registration_matrix(matrix)
    m = orientation_matrix(patient_position)
    c = np.array(_vec3(centre_mm, "centre_mm"))
    moved = t[:3, :3] @ c + t[:3, 3]
    s = m @ (moved - c)
    yaw, pitch, roll = decompose_rotation(m @ t[:3, :3] @ m.T)
    return Pose(float(s[0]), float(s[1]), float(s[2]), yaw, pitch, roll)


def couch_delta_from_room_shift(
    shift: Pose | Sequence[float], home: Pose, pivot_mm: Sequence[float],
    centre_room_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Pose:
    """The couch delta (relative to `home`) whose move produces the measured room motion.

    `shift` is a room shift (see the module doc) of the point that sat at room point
    `centre_room_mm` at the home pose. The motion D(r) = R (r - p) + p + s is composed
    with the home pose: F_new = D o F_home (docs/geometry.md kinematics, pivot
    `pivot_mm`), and F_new decomposed into a pose. An error of a few mm in
    `centre_room_mm` changes the result by that times sin(rotation): negligible.
    """
    sh = _pose(shift, "room shift")
    home = _pose(home, "home pose")
    c = np.array(_vec3(pivot_mm, "pivot_mm"))
    p = np.array(_vec3(centre_room_mm, "centre_room_mm"))
    r_d = rotation_from_angles(sh.yaw, sh.pitch, sh.roll)
    s = np.array([sh.lat, sh.long, sh.vert])
    yaw, pitch, roll = decompose_rotation(r_d @ pose_rotation(home))
    f0 = pose_transform(home, c)
    r0 = f0[:3, :3] @ c + f0[:3, 3]  # where the pivot is at the home pose
    moved = r_d @ (r0 - p) + p + s
    t = rot_z(yaw).T @ moved - c  # F_P(c) = Rz(yaw) (c + t)
    return Pose(
        float(t[0]) - home.lat, float(t[1]) - home.long, float(t[2]) - home.vert,
        _wrap_deg(yaw - home.yaw), _wrap_deg(pitch - home.pitch), _wrap_deg(roll - home.roll),
    )


def room_shift_for_couch_delta(
    delta: Pose, home: Pose, pivot_mm: Sequence[float],
    centre_room_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Pose:
    """The room shift (of the point at `centre_room_mm` at home) that moving the couch
    from `home` by `delta` produces: the inverse of `couch_delta_from_room_shift`."""
    delta = _pose(delta, "couch delta")
    home = _pose(home, "home pose")
    c = np.array(_vec3(pivot_mm, "pivot_mm"))
    p = np.array(_vec3(centre_room_mm, "centre_room_mm"))
    f0 = pose_transform(home, c)
    f1 = pose_transform(home.plus(delta), c)
    d = f1 @ np.linalg.inv(f0)
    s = d[:3, :3] @ p + d[:3, 3] - p
    yaw, pitch, roll = decompose_rotation(d[:3, :3])
    return Pose(float(s[0]), float(s[1]), float(s[2]), yaw, pitch, roll)


def couch_motion_from_registration(
    matrix: Any, patient_position: PatientPosition | str, centre_mm: Sequence[float], *,
    centre_room_mm: Sequence[float], home: Pose, pivot_mm: Sequence[float],
) -> Pose:
    """`room_shift_from_registration` turned into the couch delta relative to `home`
    (`couch_delta_from_room_shift`): what `evaluate_daily` compares with the commanded
    delta. `centre_room_mm` is the room position of `centre_mm` at home (the BB's,
    e.g. from the baseline image)."""
    shift = room_shift_from_registration(matrix, patient_position, centre_mm)
    return couch_delta_from_room_shift(shift, home, pivot_mm, centre_room_mm)


def iso_offset_from_bb(
    bb_image_mm: Sequence[float], expected_bb_room_mm: Sequence[float],
    patient_position: PatientPosition | str = PatientPosition.HFS,
    image_iso_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Vec3:
    """Where the imaging isocentre is relative to the treatment isocentre (room X, Y, Z,
    mm), from the BB found in the baseline image.

    The image is labelled as if centred on the treatment isocentre (`image_iso_mm` is
    the treatment isocentre in image coordinates), so room point r appears at image
    point M^-1 (r - o) + iso: offset o = expected BB room position - M (bb - iso).
    """
    m = orientation_matrix(patient_position)
    bb = np.array(_vec3(bb_image_mm, "bb_image_mm"))
    expected = np.array(_vec3(expected_bb_room_mm, "expected_bb_room_mm"))
    iso = np.array(_vec3(image_iso_mm, "image_iso_mm"))
    o = expected - m @ (bb - iso)
    return (float(o[0]), float(o[1]), float(o[2]))


# Fiducials of a QA phantom are found to ~0.05 mm; a residual above this means one of them
# was misfound (another dark or bright spot), not noise.
RIGID_FIT_MAX_RMS_MM = 0.5


@dataclass(frozen=True)
class RigidFit:
    """`rigid_fit`'s answer: `matrix` (4x4, maps points_from onto points_to), the residual
    RMS and the largest residual (mm) of the points after the fit."""

    matrix: np.ndarray
    rms_mm: float
    max_residual_mm: float


def rigid_fit(points_from: Any, points_to: Any, *,
              max_rms_mm: float = RIGID_FIT_MAX_RMS_MM) -> RigidFit:
    """The least-squares rigid motion T (rotation and translation, no scale, no
    reflection: Kabsch/Umeyama) with T(points_from[i]) ~ points_to[i].

    For a QA image: points_from = the fiducials (BB, air holes) in the baseline image,
    points_to = the same fiducials in the later image (DICOM LPS, mm), so `matrix` is the
    ITK fixed -> moving matrix `room_shift_from_registration` takes. At least 3 points,
    not all on one line. ValueError (one line) when the residual RMS exceeds
    `max_rms_mm` (a fiducial was misfound or the phantom deformed)."""
    def points(value: Any, name: str) -> np.ndarray:
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"{name} must be a list of points (x, y, z mm), got {type(value).__name__}")
        return np.array([_vec3(v, f"{name}[{i}]") for i, v in enumerate(value)], dtype=float)

    a = points(points_from, "points_from")
    b = points(points_to, "points_to")
    limit = finite_number(max_rms_mm, "max_rms_mm", "mm")
    if a.shape != b.shape:
        raise ValueError(f"rigid_fit needs as many points_to as points_from, got {len(b)} and "
                         f"{len(a)}")
    if len(a) < 3:
        raise ValueError(f"rigid_fit needs at least 3 points, got {len(a)}")
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    da, db = a - ca, b - cb
    # Degenerate: all points on one line (the rotation about it is undetermined).
    sv = np.linalg.svd(da, compute_uv=False)
    if not sv[1] > 1e-6 * max(float(sv[0]), 1.0):
        raise ValueError("rigid_fit: the points_from lie on one line (or coincide): the "
                         "rotation is undetermined")
    u, _, vt = np.linalg.svd(db.T @ da)
    d = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    r = u @ d @ vt
    t = cb - r @ ca
    matrix = np.eye(4)
    matrix[:3, :3] = r
    matrix[:3, 3] = t
    res = np.linalg.norm(a @ r.T + t - b, axis=1)
    rms = float(np.sqrt(np.mean(res * res)))
    worst = float(res.max())
    if not rms <= limit:
        k = int(np.argmax(res))
        raise ValueError(
            f"rigid fit of {len(a)} fiducials refused: residual RMS {rms:.2f} mm exceeds "
            f"{limit:g} mm (point {k} off by {worst:.2f} mm: misfound?)")
    return RigidFit(matrix, rms, worst)
