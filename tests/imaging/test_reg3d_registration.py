"""Rigid CBCT-to-CT registration: accuracy, convention, refusals, threading."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import numpy as np
import pytest
import SimpleITK as sitk
from reg3d_support import ISO

from imaging.registration import (
    Level,
    RegistrationFailed,
    RegistrationSettings,
    register_rigid,
)
from safety.pose import Pose
from sim.imager import rigid_matrix


def _cube_error(est: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    c = np.asarray(ISO)
    pts = np.array([c + 50.0 * np.array(b) for b in itertools.product((-1, 1), repeat=3)] + [c])
    d = (pts @ est[:3, :3].T + est[:3, 3]) - (pts @ true[:3, :3].T + true[:3, 3])
    r = est[:3, :3] @ true[:3, :3].T
    ang = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2))))
    return float(np.linalg.norm(d, axis=1).max()), ang


CASES = {
    "hfs_small": (rigid_matrix(ISO, (1.0, -0.5, 0.6), (0.3, -0.4, 0.5)), Pose(), "HFS"),
    "ffs_couch_moved": (rigid_matrix(ISO, (-6.0, 4.0, -5.0), (-2.0, 1.0, -1.5)),
                        Pose(20.0, -35.0, 12.0, 4.0, 0.8, -0.6), "FFS"),
    "hfp_largest": (rigid_matrix(ISO, (7.0, -6.9, 7.0), (3.0, -3.0, 3.0)), Pose(), "HFP"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_registration_recovers_setup_error_within_half_mm_and_fifth_degree(
    name: str, plan_ct: sitk.Image, make_cbct
) -> None:
    truth, couch, position = CASES[name]
    res = register_rigid(plan_ct, make_cbct(truth, couch, position), iso_mm=ISO)
    mm, deg = _cube_error(res.matrix, truth)
    assert res.converged, res.reason
    assert mm <= 0.5 and deg <= 0.2, (mm, deg)


def test_matrix_maps_planning_points_to_daily_points(plan_ct, make_cbct, setup_error) -> None:
    res = register_rigid(plan_ct, make_cbct(setup_error), iso_mm=ISO)
    # the ITK convention: T, not T^-1 (a sign error would be off by twice the shift)
    assert np.allclose(res.matrix, setup_error, atol=0.2)
    shift_at_iso = setup_error[:3, :3] @ np.asarray(ISO) + setup_error[:3, 3] - np.asarray(ISO)
    assert np.allclose(res.translation_mm, shift_at_iso, atol=0.3)
    assert np.allclose(res.rotation_deg, (1.2, -1.5, 2.0), atol=0.15)


def test_json_dict_has_the_command_keys(plan_ct, make_cbct, setup_error) -> None:
    d = register_rigid(plan_ct, make_cbct(setup_error), iso_mm=ISO).to_json_dict()
    assert {"matrix", "translation_mm", "rotation_deg", "metric", "seconds", "converged"} <= set(d)
    assert len(d["matrix"]) == 4 and all(len(r) == 4 for r in d["matrix"])


def test_same_images_give_the_same_result(plan_ct, make_cbct, setup_error) -> None:
    cbct = make_cbct(setup_error)
    a = register_rigid(plan_ct, cbct, iso_mm=ISO)
    b = register_rigid(plan_ct, cbct, iso_mm=ISO)
    assert np.array_equal(a.matrix, b.matrix)


def test_unrelated_image_is_refused_as_poor_match(plan_ct, make_cbct, setup_error) -> None:
    cbct = make_cbct(setup_error)
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(
        rng.normal(0, 100, sitk.GetArrayViewFromImage(cbct).shape).astype(np.float32))
    noise.CopyInformation(cbct)
    res = register_rigid(plan_ct, noise, iso_mm=ISO)
    assert not res.converged
    assert res.quality == "poor" and "correlation" in res.reason


def test_optimizer_stopping_on_iteration_limit_is_refused(plan_ct, make_cbct, setup_error) -> None:
    starved = RegistrationSettings(levels=(Level(4.0, 0.2, 2.0, 0.02, max_iterations=2),))
    res = register_rigid(plan_ct, make_cbct(setup_error), iso_mm=ISO, settings=starved)
    assert not res.converged
    assert res.quality == "not_converged" and "maximum of 2 iterations" in res.reason


def test_isocentre_outside_planning_image_is_a_value_error(plan_ct, make_cbct,
                                                            setup_error) -> None:
    with pytest.raises(ValueError, match="outside the fixed image"):
        register_rigid(plan_ct, make_cbct(setup_error), iso_mm=(0.0, 0.0, 900.0))


def test_two_dimensional_image_is_rejected(plan_ct) -> None:
    flat = sitk.Image([64, 64], sitk.sitkFloat32)
    with pytest.raises(ValueError, match="3D"):
        register_rigid(plan_ct, flat, iso_mm=ISO)


def test_images_that_do_not_overlap_fail_cleanly(plan_ct, make_cbct, setup_error) -> None:
    far = make_cbct(setup_error)
    far.SetOrigin([o + 2000.0 for o in far.GetOrigin()])
    with pytest.raises((RegistrationFailed, ValueError)):
        register_rigid(plan_ct, far, iso_mm=ISO)


async def test_registration_in_worker_thread_leaves_event_loop_responsive(
    plan_ct, make_cbct, setup_error
) -> None:
    cbct = make_cbct(setup_error)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def work() -> None:
        try:
            await asyncio.to_thread(register_rigid, plan_ct, cbct, iso_mm=ISO)
        finally:
            done.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        tg.create_task(work())
    # The loop kept ticking throughout (a GIL-holding registration would show one
    # gap as long as the whole registration); the bound is loose for a shared machine.
    assert len(gaps) > 20
    assert max(gaps) < 0.25
