"""Simulated imaging: planning CT and daily CBCT of the procedural phantom.

World model (docs/geometry.md): the anatomy is placed on the table top by a
rigid transform A (planning point p -> table-top point A(p); a perfect set-up
is A(p) = M (p - iso)); at couch pose P the anatomy point p is at room point
F_P(A(p)). The CBCT is reconstructed in the daily image frame, where daily
point q is room point M (q - iso). So the voxel at daily point q shows the
planning anatomy p with T(p) = q, where

    T(p) = M^-1 F_Pimg(A(p)) + iso        (the true registration, ITK convention)

The CBCT samples the analytic phantom at T^-1(q) for every voxel (no
interpolation bias), then degrades it like a CBCT: other HU scale and offset,
noise, cupping and low-frequency shading, and a truncated cylindrical field
of view about the gantry axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from safety.geometry import orientation_matrix, pose_transform, rotation_from_angles
from safety.pose import Pose
from sim.phantom import Phantom

PLANNING_SIZE = (256, 256, 128)
PLANNING_SPACING = (1.5, 1.5, 2.0)
CBCT_SIZE = (240, 240, 100)
CBCT_SPACING = (1.0, 1.0, 1.6)
CBCT_OUTSIDE_FOV = -1000.0

Vec3 = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class CbctDegradation:
    """How a simulated CBCT differs from the planning CT. The defaults are the
    degradations every caller got before these options existed (same random draws,
    so the same images for the same generator)."""

    scale: tuple[float, float] = (0.85, 0.95)  # HU gain, drawn uniformly
    offset_hu: tuple[float, float] = (20.0, 60.0)
    cupping_hu: tuple[float, float] = (40.0, 80.0)  # centre reads this much low
    noise_hu: float = 25.0
    # Reconstructed field of view about the gantry axis; None: the largest circle in
    # the image (half its smaller in-plane extent).
    fov_radius_mm: float | None = None
    # Streak artefacts: this many high-density sources (a hip prosthesis, a fiducial,
    # dental work), each throwing `streak_lines` bright/dark lines across the axial
    # slices within +-streak_half_length_mm of it.
    streak_sources: int = 0
    streak_hu: float = 150.0
    streak_lines: int = 8
    streak_half_length_mm: float = 20.0


@dataclass(frozen=True)
class TableTop:
    """A carbon-fibre couch table top: two dense skins with a foam core, flat, under
    the patient. It is fixed to the couch, not to the anatomy: in the planning CT it
    sits under the patient as set up there, in a daily image it sits where the couch
    is while the patient lies displaced on it by the set-up error.

    `surface_mm` is the IEC Z of its top surface in the table-top frame (couch at
    zero pose; see docs/geometry.md); `table_top_under` puts it under a phantom.
    """

    surface_mm: float
    thickness_mm: float = 50.0
    skin_mm: float = 2.5
    half_width_mm: float = 265.0
    skin_hu: float = 300.0
    core_hu: float = -900.0

    def paint(self, hu: np.ndarray, table_points: np.ndarray) -> None:
        """Overwrite `hu` (flat) where the (N, 3) table-top-frame points are inside it."""
        z = table_points[:, 2] - np.float32(self.surface_mm)  # <= 0 inside
        inside = (z <= 0) & (z >= -self.thickness_mm) & (
            np.abs(table_points[:, 0]) <= self.half_width_mm)
        skin = inside & ((z >= -self.skin_mm) | (z <= -self.thickness_mm + self.skin_mm))
        hu[inside] = np.float32(self.core_hu)
        hu[skin] = np.float32(self.skin_hu)


def table_top_under(phantom: Phantom, iso: Vec3, patient_position: str,
                    gap_mm: float = 0.0) -> TableTop:
    """The table top touching the lowest point of the phantom's body (its first
    primitive, an elliptic cylinder along planning z) for a perfect set-up."""
    body = phantom.primitives[0]
    row = orientation_matrix(patient_position)[2]  # IEC Z of a planning vector
    c = np.asarray(body.centre, dtype=float) - np.asarray(iso, dtype=float)
    a, b = body.axes[0], body.axes[1]
    lowest = float(row @ c) - float(np.hypot(a * row[0], b * row[1]))
    return TableTop(surface_mm=lowest - gap_mm)


def _h(m3: np.ndarray | None = None, t: Vec3 | None = None) -> np.ndarray:
    out = np.eye(4)
    if m3 is not None:
        out[:3, :3] = m3
    if t is not None:
        out[:3, 3] = np.asarray(t, dtype=float)
    return out


def grid_points(size: Vec3, spacing: Vec3, origin: Vec3) -> np.ndarray:
    """(N, 3) physical points of an axis-aligned grid, in numpy (z, y, x) C order."""
    axes = [np.asarray(origin[i], np.float32) + np.arange(int(size[i]), dtype=np.float32)
            * np.float32(spacing[i]) for i in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def _size3(size: Vec3) -> tuple[int, int, int]:
    return (int(size[0]), int(size[1]), int(size[2]))


def _grid_affine(spacing: Vec3, origin: Vec3) -> np.ndarray:
    """Index (i, j, k) -> physical point of an axis-aligned grid."""
    return _h(np.diag([float(s) for s in spacing]), origin)


def _centred_origin(size: Vec3, spacing: Vec3, centre: Vec3) -> tuple[float, float, float]:
    return tuple(float(centre[i]) - (int(size[i]) - 1) * float(spacing[i]) / 2 for i in range(3))  # type: ignore[return-value]


def _to_image(values: np.ndarray, size: Vec3, spacing: Vec3, origin: Vec3) -> sitk.Image:
    arr = np.clip(np.rint(values), -32768, 32767).astype(np.int16)
    img = sitk.GetImageFromArray(arr.reshape(int(size[2]), int(size[1]), int(size[0])))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def planning_ct(
    phantom: Phantom,
    size: Vec3 = PLANNING_SIZE,
    spacing: Vec3 = PLANNING_SPACING,
    centre: Vec3 = (0.0, 0.0, 0.0),
    rng: np.random.Generator | None = None,
    noise_hu: float = 5.0,
    table_top: TableTop | None = None,
    iso: Vec3 = (0.0, 0.0, 0.0),
    patient_position: str = "HFS",
) -> sitk.Image:
    """A planning CT (int16 HU, identity direction) of the phantom, centred on `centre`.

    With `table_top`, the CT couch is in the image, placed for the perfect set-up of
    `patient_position` about `iso` (table-top point M (p - iso))."""
    origin = _centred_origin(size, spacing, centre)
    hu = phantom.evaluate_grid(_size3(size), _grid_affine(spacing, origin)).ravel()
    if table_top is not None:
        m = orientation_matrix(patient_position).astype(np.float32)
        pts = grid_points(size, spacing, origin) - np.asarray(iso, dtype=np.float32)
        table_top.paint(hu, pts @ m.T)
    if rng is not None and noise_hu > 0:
        hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return _to_image(hu, size, spacing, origin)


def setup_placement(
    iso: Vec3,
    patient_position: str,
    shift_mm: Vec3 = (0.0, 0.0, 0.0),
    rotation_deg: Vec3 = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A (4x4): planning point -> table-top point, for a set-up error given in the
    planning frame: the anatomy is rotated by Rz Ry Rx (degrees about planning x, y, z,
    through the isocentre) and shifted by `shift_mm` before the perfect placement
    A0(p) = M (p - iso)."""
    m = orientation_matrix(patient_position)
    iso_v = np.asarray(iso, dtype=float)
    err = rigid_matrix(iso, shift_mm, rotation_deg)
    return _h(m, -m @ iso_v) @ err


def _rot_x(deg: float) -> np.ndarray:
    return rotation_from_angles(0.0, deg, 0.0)


def _rot_y(deg: float) -> np.ndarray:
    return rotation_from_angles(0.0, 0.0, deg)


def true_registration_matrix(
    a_4x4: np.ndarray, couch_pose: Pose, pivot: Vec3, iso: Vec3, patient_position: str,
) -> np.ndarray:
    """T (ITK fixed->moving): T(p) = M^-1 F_Pimg(A(p)) + iso."""
    m = orientation_matrix(patient_position)
    to_daily = _h(m.T, np.asarray(iso, dtype=float))  # r -> M^-1 r + iso (M is orthogonal)
    return to_daily @ pose_transform(couch_pose, np.asarray(pivot, dtype=float)) @ np.asarray(a_4x4, dtype=float)


def acquire_cbct(
    phantom: Phantom,
    a_4x4: np.ndarray,
    couch_pose: Pose,
    pivot: Vec3,
    iso: Vec3,
    patient_position: str,
    rng: np.random.Generator,
    degrade: bool = True,
    size: Vec3 = CBCT_SIZE,
    spacing: Vec3 = CBCT_SPACING,
    degradation: CbctDegradation | None = None,
    table_top: TableTop | None = None,
    grid_offset_mm: Vec3 = (0.0, 0.0, 0.0),
) -> sitk.Image:
    """A CBCT in the daily image frame (int16), its grid centred on the isocentre plus
    `grid_offset_mm` (a reconstruction grid that does not put a voxel on the
    isocentre); the field of view stays centred on the gantry axis.

    `degradation` (default CbctDegradation()) applies when `degrade`; `table_top`
    adds the couch where it is at `couch_pose`, whatever the set-up error."""
    t = true_registration_matrix(a_4x4, couch_pose, pivot, iso, patient_position)
    t_inv = np.linalg.inv(t)
    origin = _centred_origin(size, spacing, np.asarray(iso, float) + np.asarray(grid_offset_mm, float))
    hu = phantom.evaluate_grid(_size3(size), t_inv @ _grid_affine(spacing, origin)).ravel()
    q: np.ndarray | None = None
    if table_top is not None:
        q = grid_points(size, spacing, origin)
        # daily q -> room M (q - iso) -> table-top frame F_P^-1(room)
        to_table = np.linalg.inv(pose_transform(couch_pose, np.asarray(pivot, dtype=float))) @ _h(
            orientation_matrix(patient_position), -orientation_matrix(patient_position) @ np.asarray(iso, float))
        pts = q @ to_table[:3, :3].T.astype(np.float32) + to_table[:3, 3].astype(np.float32)
        table_top.paint(hu, pts)
    if degrade:
        if q is None:
            q = grid_points(size, spacing, origin)
        hu = _degrade(hu, q, iso, size, spacing, rng, degradation or CbctDegradation())
    return _to_image(hu, size, spacing, origin)


def _degrade(
    hu: np.ndarray, q: np.ndarray, iso: Vec3, size: Vec3, spacing: Vec3, rng: np.random.Generator,
    how: CbctDegradation,
) -> np.ndarray:
    # The gantry axis is daily z for every patient position (IEC Y = +-z in M).
    fov_r = how.fov_radius_mm or min(
        int(size[0]) * float(spacing[0]), int(size[1]) * float(spacing[1])) / 2.0
    dx = q[:, 0] - np.float32(iso[0])
    dy = q[:, 1] - np.float32(iso[1])
    dz = q[:, 2] - np.float32(iso[2])
    rr = (dx * dx + dy * dy) / np.float32(fov_r * fov_r)
    scale = np.float32(rng.uniform(*how.scale))
    offset = np.float32(rng.uniform(*how.offset_hu))
    cupping = np.float32(rng.uniform(*how.cupping_hu))
    out = scale * hu + offset
    # Cupping: the centre reads low (beam hardening / scatter), rising towards the rim.
    out -= cupping * (1.0 - rr)
    # Low-frequency shading: a lateral ramp and a slow wave along the gantry axis.
    phase = np.float32(rng.uniform(0, 2 * np.pi))
    out += np.float32(rng.uniform(-25, 25)) * dx / np.float32(fov_r)
    out += np.float32(20.0) * np.sin(dz / np.float32(45.0) + phase)
    out += rng.normal(0.0, how.noise_hu, out.shape).astype(np.float32)
    for _ in range(how.streak_sources):
        _add_streaks(out, dx, dy, dz, fov_r, how, rng)
    out[rr > 1.0] = np.float32(CBCT_OUTSIDE_FOV)
    return out


def _add_streaks(out: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
                 fov_r: float, how: CbctDegradation, rng: np.random.Generator) -> None:
    """Lines of alternating sign through one dense source, fading with distance from
    it, in the axial slices near it: the look of metal / photon-starvation streaks."""
    r0 = rng.uniform(0.0, 0.6 * fov_r)
    phi = rng.uniform(0.0, 2 * np.pi)
    sx, sy = np.float32(r0 * np.cos(phi)), np.float32(r0 * np.sin(phi))
    sz = np.float32(rng.uniform(-30.0, 30.0))
    near = np.flatnonzero(np.abs(dz - sz) <= how.streak_half_length_mm)
    if near.size == 0:
        return
    px, py = dx[near] - sx, dy[near] - sy
    fade = np.float32(how.streak_hu) / (1.0 + np.sqrt(px * px + py * py) / np.float32(60.0))
    add = np.zeros(near.size, dtype=np.float32)
    for k, ang in enumerate(rng.uniform(0.0, np.pi, how.streak_lines)):
        # perpendicular distance to the line through the source at angle `ang`
        d = px * np.float32(np.sin(ang)) - py * np.float32(np.cos(ang))
        add += np.float32(1.0 if k % 2 == 0 else -1.0) * np.exp(-(d * d) / np.float32(2.0))
    out[near] += fade * add


def placement_for_registration(
    t_4x4: np.ndarray, couch_pose: Pose, pivot: Vec3, iso: Vec3, patient_position: str,
) -> np.ndarray:
    """The placement A that makes the true registration at `couch_pose` equal `t_4x4`
    (inverse of `true_registration_matrix` in A): A = F_P^-1 o (q -> M (q - iso)) o T."""
    m = orientation_matrix(patient_position)
    iso_v = np.asarray(iso, dtype=float)
    to_room = _h(m, -m @ iso_v)
    return np.linalg.inv(pose_transform(couch_pose, np.asarray(pivot, dtype=float))) @ to_room @ np.asarray(t_4x4, float)


def rigid_matrix(
    iso: Vec3, shift_mm: Vec3, rotation_deg: Vec3,
) -> np.ndarray:
    """4x4 rigid map in the planning frame: rotate by Rz Ry Rx (degrees about x, y, z)
    through `iso`, then shift; the form set-up errors are drawn in."""
    rx, ry, rz = (float(v) for v in rotation_deg)
    r = rotation_from_angles(rz, 0.0, 0.0) @ _rot_y(ry) @ _rot_x(rx)
    iso_v = np.asarray(iso, dtype=float)
    return _h(r, iso_v - r @ iso_v + np.asarray(shift_mm, dtype=float))


def random_setup_error(
    rng: np.random.Generator,
    shift_range_mm: tuple[float, float] = (1.0, 12.0),
    rotation_range_deg: tuple[float, float] = (0.3, 3.0),
) -> tuple[np.ndarray, np.ndarray]:
    """(shift_mm, rotation_deg): a shift of uniform length in range, random direction,
    and a rotation about each of x, y, z with magnitude in range and random sign."""
    d = rng.normal(size=3)
    shift = d / np.linalg.norm(d) * rng.uniform(*shift_range_mm)
    rot = rng.uniform(*rotation_range_deg, size=3) * rng.choice([-1.0, 1.0], size=3)
    return shift, rot
