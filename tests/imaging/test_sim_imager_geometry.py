"""The simulated imager: world model, true registration and the phantom."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from reg3d_support import ISO, PIVOT

from safety.geometry import orientation_matrix, pose_transform
from safety.pose import Pose
from sim.imager import (
    CBCT_OUTSIDE_FOV,
    acquire_cbct,
    grid_points,
    placement_for_registration,
    rigid_matrix,
    setup_placement,
    true_registration_matrix,
)

POSITIONS = ["HFS", "HFP", "FFS", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"]


@pytest.mark.parametrize("position", POSITIONS)
def test_perfect_setup_at_zero_couch_gives_identity_registration(position: str) -> None:
    a = setup_placement(ISO, position)
    assert np.allclose(true_registration_matrix(a, Pose(), PIVOT, ISO, position), np.eye(4))


@pytest.mark.parametrize("position", POSITIONS)
def test_true_registration_follows_the_contract_formula(position: str) -> None:
    couch = Pose(12.0, -40.0, 7.0, 5.0, 1.0, -1.5)
    a = setup_placement(ISO, position, (2.0, -3.0, 4.0), (0.5, 1.0, -2.0))
    t = true_registration_matrix(a, couch, PIVOT, ISO, position)
    m = orientation_matrix(position)
    p = np.array([10.0, -20.0, 30.0])
    room = (pose_transform(couch, PIVOT) @ a @ np.append(p, 1.0))[:3]
    # daily point q is room point M (q - iso)
    q = (t @ np.append(p, 1.0))[:3]
    assert np.allclose(m @ (q - np.asarray(ISO)), room)


def test_placement_for_registration_reproduces_the_requested_registration() -> None:
    t = rigid_matrix(ISO, (5.0, -2.0, 8.0), (-1.0, 2.5, 0.7))
    couch = Pose(-30.0, 100.0, -20.0, -10.0, 2.0, 1.0)
    a = placement_for_registration(t, couch, PIVOT, ISO, "FFDL")
    assert np.allclose(true_registration_matrix(a, couch, PIVOT, ISO, "FFDL"), t)


def test_cbct_voxel_shows_planning_anatomy_at_inverse_registration(phantom, make_cbct) -> None:
    t = rigid_matrix(ISO, (4.0, 6.0, -3.0), (2.0, -1.0, 1.5))
    cbct = make_cbct(t, degrade=False)
    arr = sitk.GetArrayViewFromImage(cbct)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, [s for s in cbct.GetSize()], size=(200, 3))
    q = np.array([cbct.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx])
    p = (np.linalg.inv(t) @ np.c_[q, np.ones(len(q))].T).T[:, :3]
    expected = phantom.evaluate(p)
    got = np.array([arr[k, j, i] for i, j, k in idx], dtype=float)
    assert np.abs(got - np.rint(expected)).max() <= 1.0


def test_degraded_cbct_is_truncated_outside_the_cylindrical_field_of_view(make_cbct) -> None:
    cbct = make_cbct(np.eye(4))
    arr = sitk.GetArrayViewFromImage(cbct)
    assert np.all(arr[:, 0, 0] == CBCT_OUTSIDE_FOV)  # a corner of every slice
    assert arr[arr.shape[0] // 2, arr.shape[1] // 2, arr.shape[2] // 2] != CBCT_OUTSIDE_FOV


def test_phantom_point_and_grid_evaluation_agree(phantom) -> None:
    size, spacing, origin = (40, 36, 20), (3.0, 3.0, 4.0), (-60.0, -50.0, -40.0)
    aff = np.eye(4)
    aff[:3, :3] = np.diag(spacing)
    aff[:3, 3] = origin
    grid = phantom.evaluate_grid(size, aff).ravel()
    points = phantom.evaluate(grid_points(size, spacing, origin))
    assert np.abs(grid - points).max() < 0.5


def test_phantom_is_not_left_right_symmetric(phantom) -> None:
    pts = grid_points((30, 30, 20), (6.0, 6.0, 8.0), (-90.0, -90.0, -80.0))
    mirrored = pts * np.array([-1.0, 1.0, 1.0])
    assert np.abs(phantom.evaluate(pts) - phantom.evaluate(mirrored)).mean() > 50.0


def test_different_seeds_give_different_cbct_noise(phantom) -> None:
    a = setup_placement(ISO, "HFS")
    one = acquire_cbct(phantom, a, Pose(), PIVOT, ISO, "HFS", np.random.default_rng(1),
                       size=(32, 32, 16))
    two = acquire_cbct(phantom, a, Pose(), PIVOT, ISO, "HFS", np.random.default_rng(2),
                       size=(32, 32, 16))
    assert not np.array_equal(sitk.GetArrayViewFromImage(one), sitk.GetArrayViewFromImage(two))
