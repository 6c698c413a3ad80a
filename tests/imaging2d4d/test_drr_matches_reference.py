"""The compiled ray caster (imaging/_raycast.c via imaging/drr.py) against line integrals computed here
independently: an analytic, smooth, compactly supported bump, and a uniform block.
The CT is anisotropic, rotated and off-centre so that a mix-up of axes, spacing
or direction shows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

import imaging.drr as drr_module
import imaging.voxel_grid as voxel_grid_module
from imaging.drr import (
    MU_WATER_PER_MM,
    AttenuationVolume,
    KvGeometry,
    Projector,
    detector_grid,
    drr,
    layout_for,
    room_to_planning,
)
from imaging.registration2d3d import params_to_room_motion

SPACING = (1.0, 1.25, 1.5)
SIZE = (72, 64, 56)  # x, y, z voxels
CENTRE = np.array([-2.0, 3.0, 4.0])  # planning mm, middle of the CT
BUMP_CENTRE = np.array([-3.0, 4.0, 6.0])  # planning mm
BUMP_RADIUS = 18.0  # mm
BUMP_MU = 0.5  # 1/mm at the centre: its rim below the air threshold is thin
ISO = (2.0, -1.0, 3.0)
# Linear interpolation flattens the bump's peak by about h^2 / (2 R^2) of it for
# voxel side h (0.3-0.5 % here, measured); an axis, spacing or direction mistake
# is off by tens of percent.
TOLERANCE = 0.01


def _direction() -> np.ndarray:
    """An oblique, proper rotation for the CT's direction cosines."""
    return params_to_room_motion(np.array([0, 0, 0, 20.0, -35.0, 50.0]))[:3, :3]


def _origin() -> np.ndarray:
    half = (np.asarray(SIZE) - 1.0) * np.asarray(SPACING) / 2.0
    return CENTRE - _direction() @ half


def _ct(mu_of_point) -> sitk.Image:  # type: ignore[no-untyped-def]
    img = sitk.Image(list(SIZE), sitk.sitkFloat32)
    img.SetSpacing(SPACING)
    img.SetOrigin([float(v) for v in _origin()])
    img.SetDirection([float(v) for v in _direction().ravel()])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in SIZE], indexing="ij"), -1).reshape(-1, 3)
    pts = _origin() + (idx * np.asarray(SPACING)) @ _direction().T
    mu = mu_of_point(pts).reshape(SIZE).transpose(2, 1, 0)  # -> [z, y, x]
    hu = (mu / MU_WATER_PER_MM - 1.0) * 1000.0
    out = sitk.GetImageFromArray(hu.astype(np.float32))
    out.CopyInformation(img)
    return out


def _bump(pts: np.ndarray) -> np.ndarray:
    r2 = np.sum((pts - BUMP_CENTRE) ** 2, axis=1) / BUMP_RADIUS**2
    return BUMP_MU * np.clip(1.0 - r2, 0.0, None) ** 2


def _rays_in_planning(geo: KvGeometry, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source and every detector pixel, mapped into the planning frame, [v, u] order."""
    e_u, e_v, n = geo.axes()
    u0, v0 = geo.origin_uv()
    nu, nv = geo.size_px
    uu = u0 + geo.pixel_mm * np.arange(nu)
    vv = v0 + geo.pixel_mm * np.arange(nv)
    pix = (geo.source() - geo.sid_mm * n + uu[None, :, None] * e_u
           + vv[:, None, None] * e_v)
    m = room_to_planning(t, ISO, "HFS")
    return m[:3, :3] @ geo.source() + m[:3, 3], pix @ m[:3, :3].T + m[:3, 3]


def _bump_line_integrals(geo: KvGeometry, t: np.ndarray) -> np.ndarray:
    # integral of A (1 - (d^2 + s^2) / R^2)^2 ds over the chord = A 16 h^5 / (15 R^4),
    # with d the distance of the ray from the centre and h^2 = R^2 - d^2
    src, pix = _rays_in_planning(geo, t)
    w = pix - src
    w /= np.linalg.norm(w, axis=-1, keepdims=True)
    to_c = BUMP_CENTRE - src
    along = to_c @ w.reshape(-1, 3).T
    d2 = to_c @ to_c - along**2
    h = np.sqrt(np.clip(BUMP_RADIUS**2 - d2, 0.0, None)).reshape(w.shape[:2])
    return BUMP_MU * 16.0 * h**5 / (15.0 * BUMP_RADIUS**4)


@pytest.fixture(scope="module")
def bump_volume() -> AttenuationVolume:
    return AttenuationVolume.from_ct(_ct(_bump))


@pytest.mark.parametrize("angle", [0.0, 33.0, 90.0, 215.0])
@pytest.mark.parametrize("pose", [(0, 0, 0, 0, 0, 0), (4.0, -6.0, 2.5, 3.0, -2.0, 7.0)])
def test_bump_line_integrals_match_the_analytic_ones(bump_volume, angle, pose) -> None:  # type: ignore[no-untyped-def]
    geo = KvGeometry(angle_deg=angle, size_px=(48, 40), pixel_mm=1.3, offset_mm=(2.0, -1.5))
    t = params_to_room_motion(np.asarray(pose, float))
    image = drr(bump_volume, geo, t, ISO, "HFS", rays="full")
    expected = _bump_line_integrals(geo, t)
    assert expected.max() > 5.0  # the bump is in view
    assert np.max(np.abs(image - expected)) <= TOLERANCE * expected.max()


def test_uniform_block_integrates_to_its_chord_within_one_plane_step() -> None:
    # Tissue up to every face: every read next to the volume's edge is exercised.
    mu = 0.02
    vol = AttenuationVolume.from_ct(_ct(lambda pts: np.full(len(pts), mu)))
    geo = KvGeometry(angle_deg=57.0, size_px=(40, 40), pixel_mm=2.5)
    t = params_to_room_motion(np.array([1.0, 2.0, -3.0, 10.0, 5.0, -8.0]))
    image = drr(vol, geo, t, ISO, "HFS", rays="full")
    src, pix = _rays_in_planning(geo, t)
    # chord through the box of voxel centres, in continuous index space (slab method)
    to_index = np.linalg.inv(_direction() @ np.diag(SPACING))
    s = to_index @ (src - _origin())
    d = (pix - src) @ to_index.T
    with np.errstate(divide="ignore"):
        ta = (0.0 - s) / d
        tb = (np.asarray(SIZE) - 1.0 - s) / d
    t0 = np.max(np.minimum(ta, tb), axis=-1)
    t1 = np.min(np.maximum(ta, tb), axis=-1)
    chord = np.clip(t1 - t0, 0.0, None) * np.linalg.norm(pix - src, axis=-1)
    # Joseph's sum counts the whole planes inside the chord: one more or one fewer
    # than the chord's length in plane steps
    step = np.linalg.norm(pix - src, axis=-1) / np.max(np.abs(d), axis=-1)
    assert np.all(np.abs(image - mu * chord) <= mu * step + 1e-4)
    assert image.max() > 0.5 * mu * max(SIZE)  # rays do cross the block


def test_threads_share_rows_without_changing_the_image(bump_volume) -> None:  # type: ignore[no-untyped-def]
    geo = KvGeometry(angle_deg=33.0, size_px=(48, 40), pixel_mm=1.3)
    t = room_to_planning(np.eye(4), ISO, "HFS")
    one = Projector(bump_volume, geo, detector_grid(geo), threads=1).project(t)
    three = Projector(bump_volume, geo, detector_grid(geo), threads=3).project(t)
    assert np.array_equal(one, three)


def test_non_finite_transform_is_refused(bump_volume) -> None:  # type: ignore[no-untyped-def]
    geo = KvGeometry(size_px=(8, 8))
    t = np.eye(4)
    t[0, 3] = math.nan
    with pytest.raises(ValueError, match="finite 4x4"):
        Projector(bump_volume, geo, detector_grid(geo)).project(t)


def test_ct_with_non_finite_voxels_is_refused() -> None:
    hu = np.zeros((4, 4, 4), np.float32)
    hu[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite voxel"):
        AttenuationVolume.from_ct(sitk.GetImageFromArray(hu))


def test_non_finite_detector_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="detector offset"):
        KvGeometry(offset_mm=(0.0, math.inf))


def test_memory_order_of_the_voxels_does_not_change_the_image(bump_volume, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    geo = KvGeometry(angle_deg=33.0, size_px=(48, 40), pixel_mm=1.3)
    t = room_to_planning(params_to_room_motion(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
                         ISO, "HFS")
    images = [Projector(bump_volume, geo, detector_grid(geo), threads=1).project(t)]
    # rays 0.7 voxel apart: cast 8 at a time (drr.TILE_RAY_PITCH_VOXELS); then one by one,
    # every grid taken as sparse (voxels stored across the rays), then as dense (along)
    monkeypatch.setattr(drr_module, "TILE_RAY_PITCH_VOXELS", 0.0)
    for threshold in (0.0, 1e9):
        monkeypatch.setattr(voxel_grid_module, "SPARSE_RAY_PITCH_VOXELS", threshold)
        images.append(Projector(bump_volume, geo, detector_grid(geo), threads=1).project(t))
    assert np.array_equal(images[0], images[1])
    assert np.array_equal(images[0], images[2])


def test_sparse_rays_read_voxels_stored_across_them_and_dense_rays_along() -> None:
    along_x = np.array([1.0, 0.05, 0.0])
    across_y = np.array([0.0, 1.0, 0.1])
    spacing = np.array([1.5, 1.5, 2.0])
    # (slowest, middle, fastest): x is the ray axis, y the detector's column axis
    assert layout_for(along_x, across_y, ray_pitch=2.5, spacing_xyz=spacing) == (2, 0, 1)
    assert layout_for(along_x, across_y, ray_pitch=0.4, spacing_xyz=spacing) == (2, 1, 0)
