"""The compiled ray caster (imaging/_raycast.c) is the Python reference
(raycast_reference.py) compiled: the same image on volumes and geometries of
every orientation, and bad arguments refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imaging import _raycast
from imaging.drr import AttenuationVolume, KvGeometry, Projector, roi_grid
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


def _images(volume: AttenuationVolume, angle: float, motion: np.ndarray) -> tuple[np.ndarray, ...]:
    geo = KvGeometry(angle_deg=angle, size_px=(64, 64), pixel_mm=1.0)
    grid = roi_grid(geo, 30.0, 3.0)
    out = []
    for kernel in (_raycast.cast_rows, reference_cast_rows):
        projector = Projector(volume, geo, grid, threads=1)
        projector_kernel = kernel

        def _fixed(k=projector_kernel):  # type: ignore[no-untyped-def]
            return k

        from imaging import drr

        saved = drr._kernel
        drr._kernel = _fixed  # type: ignore[assignment]
        try:
            out.append(projector.project(motion))
        finally:
            drr._kernel = saved  # type: ignore[assignment]
    return tuple(out)


@pytest.mark.parametrize(("seed", "angle"), [(1, 0.0), (2, 90.0), (3, 37.0), (4, 251.0)])
def test_the_compiled_caster_gives_the_reference_image(seed: int, angle: float) -> None:
    motion = np.eye(4)
    motion[:3, 3] = (seed * 1.3, -seed * 0.7, seed * 0.4)
    compiled, reference = _images(_volume(seed), angle, motion)
    assert reference.max() > 0.1  # rays went through tissue
    np.testing.assert_allclose(compiled, reference, rtol=1e-5, atol=1e-6)


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
