"""imaging.qa_bb.find_bb on synthetic CBCTs of a BB phantom: noise, cupping, shading,
streaks, a truncated field of view; sub-voxel accuracy; one-line refusals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.qa_bb import BbFound, find_bb
from safety.geometry import orientation_matrix
from safety.pose import Pose
from safety.qa import QaMeasurement, evaluate_daily
from safety.qa_geometry import iso_offset_from_bb
from safety.qa_tolerances import PROFILES

SPACING = (1.0, 1.0, 1.6)  # the simulated CBCT's voxels (sim/imager.py)
SIZE = (120, 120, 64)  # x, y, z voxels


def cbct(
    bbs_mm: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    noise_hu: float = 25.0,
    cupping_hu: float = 60.0,
    streak_sources: Sequence[Sequence[float]] = (),
    streak_hu: float = 150.0,
    bb_radius_mm: float = 2.0,
    bb_hu: float = 3000.0,
    cube_half_mm: float = 50.0,
    size: Sequence[int] = SIZE,
    spacing: Sequence[float] = SPACING,
    origin: Sequence[float] | None = None,
    flip_x: bool = False,
) -> sitk.Image:
    """An acrylic cube (120 HU) in air with BBs, rendered with exact partial volume
    (7^3 sub-samples per voxel near a BB), then degraded like a CBCT: HU gain and
    offset, cupping, a lateral ramp, noise, streaks through `streak_sources`, air
    outside a cylindrical field of view. Image centre at physical (0, 0, 0)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(v) for v in size)
    sp = np.array(spacing, dtype=float)
    if origin is None:
        origin = [-(n - 1) * s / 2.0 for n, s in zip((nx, ny, nz), sp)]
    direction = np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0])
    if flip_x:
        origin = [-origin[0], origin[1], origin[2]]
    o = np.array(origin, dtype=float)
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    px = o[0] + direction[0, 0] * i * sp[0]
    py = o[1] + j * sp[1]
    pz = o[2] + k * sp[2]
    hu = np.full((nz, ny, nx), -1000.0)
    inside = ((np.abs(px) <= cube_half_mm) & (np.abs(py) <= cube_half_mm)
              & (np.abs(pz) <= cube_half_mm))
    hu[inside] = 120.0
    sub = (np.arange(7) + 0.5) / 7.0 - 0.5
    for bb in bbs_mm:
        c = np.array(bb, dtype=float)
        reach = bb_radius_mm + sp
        near = ((np.abs(px - c[0]) <= reach[0]) & (np.abs(py - c[1]) <= reach[1])
                & (np.abs(pz - c[2]) <= reach[2]))
        for idx in zip(*np.nonzero(near)):
            x0, y0, z0 = px[idx], py[idx], pz[idx]
            sx, sy, sz = np.meshgrid(x0 + direction[0, 0] * sub * sp[0], y0 + sub * sp[1],
                                     z0 + sub * sp[2], indexing="ij")
            f = np.mean((sx - c[0]) ** 2 + (sy - c[1]) ** 2 + (sz - c[2]) ** 2 <= bb_radius_mm ** 2)
            hu[idx] = hu[idx] * (1.0 - f) + bb_hu * f
    fov = 0.5 * min(nx * sp[0], ny * sp[1])
    rr = (px ** 2 + py ** 2) / fov ** 2
    out = 0.9 * hu + 40.0 - cupping_hu * (1.0 - rr) + 20.0 * px / fov
    out += rng.normal(0.0, noise_hu, out.shape)
    for src in streak_sources:
        near_z = np.abs(pz - src[2]) <= 20.0
        dx, dy = px - src[0], py - src[1]
        fade = streak_hu / (1.0 + np.sqrt(dx * dx + dy * dy) / 60.0)
        add = np.zeros_like(out)
        for n, ang in enumerate(rng.uniform(0.0, np.pi, 8)):
            d = dx * np.sin(ang) - dy * np.cos(ang)
            add += (1.0 if n % 2 == 0 else -1.0) * np.exp(-d * d / 2.0)
        out += np.where(near_z, fade * add, 0.0)
    out[rr > 1.0] = -1000.0
    img = sitk.GetImageFromArray(np.round(out).astype(np.int16))
    img.SetSpacing([float(v) for v in sp])
    img.SetOrigin([float(v) for v in o])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def error_mm(found: BbFound, truth: Sequence[float]) -> float:
    return float(np.linalg.norm(np.array(found.position_mm) - np.array(truth)))


@pytest.mark.parametrize("seed", range(6))
def test_bb_at_a_subvoxel_position_is_found_within_a_tenth_of_a_mm(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = rng.uniform(-12.0, 12.0, 3)
    img = cbct([truth], seed=seed, streak_sources=[rng.uniform(-30, 30, 3)])
    found = find_bb(img)
    assert error_mm(found, truth) < 0.1
    assert found.peak_hu > 1500
    assert found.voxels >= 8


def test_expected_position_and_search_radius() -> None:
    truth = (4.3, -3.15, 2.55)
    found = find_bb(cbct([truth], seed=7), expected_mm=(4.0, -3.0, 2.5), search_radius_mm=10.0)
    assert error_mm(found, truth) < 0.1


def test_a_streak_through_the_bb_and_heavy_noise_do_not_move_it() -> None:
    truth = (-6.37, 8.81, -4.42)
    img = cbct([truth], seed=11, noise_hu=60.0, streak_hu=400.0,
               streak_sources=[truth, (20.0, -25.0, 0.0)])
    assert error_mm(find_bb(img), truth) < 0.1


def test_non_identity_direction_cosines() -> None:
    truth = (7.7, -2.2, 3.3)
    img = cbct([truth], seed=3, flip_x=True)
    assert img.GetDirection()[0] == -1.0
    assert error_mm(find_bb(img), truth) < 0.1


def test_two_bbs_are_refused_naming_both() -> None:
    img = cbct([(5.0, 5.0, 0.0), (-15.0, 10.0, 8.0)], seed=2)
    with pytest.raises(ValueError) as exc:
        find_bb(img)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "found 2 BB-like objects" in msg
    assert "(5.0, 5.0, 0.0)" in msg and "(-15.0, 10.0, 8.0)" in msg


def test_search_radius_picks_one_of_two() -> None:
    img = cbct([(5.0, 5.0, 0.0), (-15.0, 10.0, 8.0)], seed=2)
    found = find_bb(img, expected_mm=(-14.0, 10.0, 8.0), search_radius_mm=8.0)
    assert error_mm(found, (-15.0, 10.0, 8.0)) < 0.1


def test_no_bb_is_refused_in_one_line() -> None:
    img = cbct([], seed=4, streak_sources=[(10.0, 0.0, 0.0)])
    with pytest.raises(ValueError) as exc:
        find_bb(img)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("no BB found")
    assert "a BB needs 500 HU" in msg


def test_no_bb_near_the_expected_position() -> None:
    img = cbct([(20.0, 20.0, 0.0)], seed=5)
    with pytest.raises(ValueError,
                       match=r"^no BB found within 10 mm of \(-20\.0, -20\.0, 0\.0\) mm"):
        find_bb(img, expected_mm=(-20.0, -20.0, 0.0), search_radius_mm=10.0)


def test_large_dense_object_is_not_a_bb() -> None:
    # A 16 mm dense sphere (a marker block, not a BB): ignored, and said so.
    img = cbct([(0.0, 0.0, 0.0)], seed=6, bb_radius_mm=8.0)
    with pytest.raises(ValueError, match=r"1 larger bright object \(over 10 mm across\) ignored"):
        find_bb(img)


def test_unusable_input_is_refused_in_one_line() -> None:
    img = cbct([(0.0, 0.0, 0.0)], seed=0)
    with pytest.raises(ValueError, match=r"^search_radius_mm -1 mm must be greater than 0 mm$"):
        find_bb(img, search_radius_mm=-1.0)
    with pytest.raises(ValueError, match=r"^expected_mm y is not a finite number: nan mm$"):
        find_bb(img, expected_mm=(0.0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="lies outside the image"):
        find_bb(img, expected_mm=(500.0, 0.0, 0.0), search_radius_mm=10.0)
    arr = sitk.GetArrayFromImage(sitk.Cast(img, sitk.sitkFloat32))
    arr[3, 3, 3] = np.nan
    bad = sitk.GetImageFromArray(arr)
    with pytest.raises(ValueError, match="not finite"):
        find_bb(bad)
    with pytest.raises(ValueError, match="must be 3D"):
        find_bb(sitk.Image(10, 10, sitk.sitkInt16))


def test_iso_offset_of_0_7_mm_is_measured_and_reported_as_0_7() -> None:
    """The imaging isocentre 0.7 mm off along room X: the BB (expected at room
    (4, -3, 2.5)) appears 0.7 mm short of it in the HFS-labelled image."""
    o = np.array([0.7, 0.0, 0.0])
    expected_room = np.array([4.0, -3.0, 2.5])
    m = orientation_matrix("HFS")
    seen_image = m.T @ (expected_room - o)  # image centre = treatment iso, DICOM (0, 0, 0)
    found = find_bb(cbct([seen_image], seed=9), expected_mm=m.T @ expected_room)
    offset = iso_offset_from_bb(found.position_mm, expected_room, "HFS")
    assert np.allclose(offset, o, atol=0.1)
    result = evaluate_daily(offset, [QaMeasurement(Pose(lat=10.0), Pose(lat=10.0))],
                            [QaMeasurement(Pose(), Pose())], PROFILES["srs"])
    check = result.check("iso_coincidence", "vector")
    assert check.value == pytest.approx(0.7, abs=0.1) and check.passed
    assert check.message.startswith("iso coincidence vector: 0.7")


def test_the_simulated_rooms_qa_phantom_cbct() -> None:
    """The simulator's own QA CBCT (sim/qa_phantom.py through sim/imager.py: point-sampled
    soft-edged BB, the cube's air holes, the couch table top, CBCT degradation) at couch
    poses off by up to 3 mm and 1 deg: the BB where the simulator says it is seen."""
    from sim.imager import acquire_cbct
    from sim.qa_phantom import (
        QA_ISO_MM,
        QaPhantomSpec,
        bb_room_mm,
        default_pivot,
        image_point,
        lay_phantom,
        make_qa_phantom,
        table_top_for,
    )

    spec = QaPhantomSpec()
    phantom = make_qa_phantom(spec)
    placement = lay_phantom(Pose())
    for seed in range(3):
        rng = np.random.default_rng(seed)
        pose = Pose(*rng.uniform(-3.0, 3.0, 3), *rng.uniform(-1.0, 1.0, 3))
        img = acquire_cbct(phantom, placement, pose, default_pivot(), QA_ISO_MM, "HFS",
                           np.random.default_rng(seed), table_top=table_top_for(placement))
        truth = image_point(bb_room_mm(placement, pose, spec))
        assert error_mm(find_bb(img), truth) < 0.1
        assert error_mm(find_bb(img, expected_mm=image_point(spec.bb_offset_mm)), truth) < 0.1
