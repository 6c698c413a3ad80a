"""The compiled ray caster (imaging/_raycast.c) is the Python reference
(raycast_reference.py) compiled: the same image, bit for bit (setup.py forbids fused
multiply-adds), on volumes and geometries of every orientation, by its scalar path
and by its vector path (8 neighbouring dense rays together); bad arguments refused
in one line."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imaging import _raycast, drr
from imaging.drr import AttenuationVolume, KvGeometry, Projector, roi_grid
from imaging.registration2d3d import params_to_room_motion
from imaging.voxel_grid import SKIP_BLOCK

from .raycast_reference import cast_rows as reference_cast_rows


def _volume(seed: int) -> AttenuationVolume:
    rng = np.random.default_rng(seed)
    hu = rng.normal(0.0, 300.0, (18, 22, 26)).astype(np.float32)  # [z, y, x]
    hu[:, :3, :] = -1000.0  # air at one side: the skip tables have something to skip
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.5, 1.2, 2.5))
    img.SetOrigin((-20.0, -12.0, -22.0))
    return AttenuationVolume.from_ct(img)


def _dense_volume() -> AttenuationVolume:
    """40 x 34 x 30 voxels of 0.8 x 0.7 x 1.0 mm with air along two sides: rays 0.3 mm
    apart are dense enough for the vector path (TILE_RAY_PITCH_VOXELS)."""
    rng = np.random.default_rng(7)
    hu = rng.normal(0.0, 300.0, (30, 34, 40)).astype(np.float32)  # [z, y, x]
    hu[:, :4, :] = -1000.0
    hu[:4, :, :12] = -1000.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.8, 0.7, 1.0))
    img.SetOrigin((-16.0, -11.0, -14.0))
    return AttenuationVolume.from_ct(img)


def _project(projector: Projector, kernel, motion: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    saved = drr._kernel
    drr._kernel = lambda: kernel  # type: ignore[assignment]
    try:
        return projector.project(motion)
    finally:
        drr._kernel = saved  # type: ignore[assignment]


def _images(volume: AttenuationVolume, angle: float, motion: np.ndarray) -> tuple[np.ndarray, ...]:
    geo = KvGeometry(angle_deg=angle, size_px=(64, 64), pixel_mm=1.0)
    projector = Projector(volume, geo, roi_grid(geo, 30.0, 3.0), threads=1)
    return tuple(_project(projector, kernel, motion)
                 for kernel in (_raycast.cast_rows, reference_cast_rows))


@pytest.mark.parametrize(("seed", "angle"), [(1, 0.0), (2, 90.0), (3, 37.0), (4, 251.0)])
def test_the_compiled_caster_gives_the_reference_image(seed: int, angle: float) -> None:
    motion = np.eye(4)
    motion[:3, 3] = (seed * 1.3, -seed * 0.7, seed * 0.4)
    compiled, reference = _images(_volume(seed), angle, motion)
    assert reference.max() > 0.1  # rays went through tissue
    np.testing.assert_array_equal(compiled, reference)


@pytest.mark.parametrize(("angle", "offset_mm", "rotation_deg"), [
    (0.0, (0.0, 0.0), (0.0, 0.0, 0.0)),  # rows along x: lanes in the order of the rays
    # rows along -z: lanes in reverse; rotated: the lanes' samples on a plane are
    # sometimes on two lines, and those planes are cast lane by lane
    (90.0, (0.0, 0.0), (4.0, -3.0, 6.0)),
    (37.0, (0.0, 0.0), (4.0, -3.0, 6.0)),  # oblique
    # across the volume's edge: rays that miss it, tiles refused (too few planes in
    # common), and tiles whose sample positions are clamped at the volume's faces
    (0.0, (18.0, -6.0), (4.0, -3.0, 6.0)),
])
def test_dense_rays_give_the_reference_image_by_either_path(
    monkeypatch, angle: float, offset_mm: tuple[float, float],  # type: ignore[no-untyped-def]
    rotation_deg: tuple[float, float, float],
) -> None:
    geo = KvGeometry(angle_deg=angle, size_px=(64, 64), pixel_mm=1.0, offset_mm=offset_mm)
    grid = roi_grid(geo, 7.2 if offset_mm == (0.0, 0.0) else 3.0, 0.3)
    assert grid.nu % 8 != 0  # rays one by one at the end of each row
    motion = params_to_room_motion(np.array([1.3, -0.7, 0.4, *rotation_deg]))
    volume = _dense_volume()
    reference = _project(Projector(volume, geo, grid, threads=1), reference_cast_rows, motion)
    assert reference.max() > 0.1
    layouts = []
    # the layout drr.py picks for dense rays (the vector path), then the one it would
    # pick without the vector path (voxels along the rays contiguous: rays one by one)
    for tile_pitch in (drr.TILE_RAY_PITCH_VOXELS, 0.0):
        monkeypatch.setattr(drr, "TILE_RAY_PITCH_VOXELS", tile_pitch)
        projector = Projector(volume, geo, grid, threads=1)
        to_index = volume.voxel_grid.physical_to_index @ motion
        layouts.append(projector._layout(to_index[:3, :3]))
        np.testing.assert_array_equal(_project(projector, _raycast.cast_rows, motion), reference)
    assert layouts[0] != layouts[1]


def test_the_caster_and_the_skip_tables_agree_on_the_block_size() -> None:
    assert _raycast.SKIP_BLOCK == SKIP_BLOCK


def test_an_argument_of_the_wrong_type_is_refused_naming_it() -> None:
    volume = _volume(5)
    vg = volume.voxel_grid
    voxels, strides = vg.layout((2, 1, 0))
    out = np.empty((4, 4), np.float64)  # float32 expected
    args = (voxels, strides, vg.shape_xyz, np.zeros((3, 4)), np.zeros(3), np.zeros(3),
            np.zeros(3), np.zeros(3), vg.box_lo, vg.box_hi, vg.skip_first, vg.skip_last)
    with pytest.raises(TypeError, match="out: expected item type 'f'"):
        _raycast.cast_rows(*args, 0, 1, out)


def test_inconsistent_skip_tables_are_refused() -> None:
    volume = _volume(6)
    vg = volume.voxel_grid
    voxels, strides = vg.layout((2, 1, 0))
    small = np.zeros((3, 1, 1), np.int32)  # covers 8 columns of a 26-voxel axis
    args = (voxels, strides, vg.shape_xyz, np.zeros((3, 4)), np.zeros(3), np.zeros(3),
            np.zeros(3), np.zeros(3), vg.box_lo, vg.box_hi, small, small)
    with pytest.raises(ValueError, match="inconsistent"):
        _raycast.cast_rows(*args, 0, 1, np.empty((4, 4), np.float32))
