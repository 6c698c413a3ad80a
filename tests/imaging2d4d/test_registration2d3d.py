"""2D/3D registration of a simulated kV pair recovers the true set-up error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imaging.drr import KvGeometry
from imaging.registration2d3d import KvView, prepare_volumes, register_2d3d
from safety.pose import Pose
from sim.imager import setup_placement, true_registration_matrix
from sim.kv import kv_through_transform

from .conftest import ISO, PAIR


def _true_t(shift, rot, position="HFS"):  # type: ignore[no-untyped-def]
    a = setup_placement(ISO, position, shift, rot)
    return true_registration_matrix(a, Pose(), (0, 0, -150), ISO, position)


def _errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    e = estimate @ np.linalg.inv(truth)
    iso4 = np.array([*ISO, 1.0])
    mm = float(np.linalg.norm((e @ iso4)[:3] - iso4[:3]))
    deg = math.degrees(math.acos(min(1.0, (np.trace(e[:3, :3]) - 1) / 2)))
    return mm, deg


@pytest.fixture(scope="module")
def volumes(plan_ct):  # type: ignore[no-untyped-def]
    return prepare_volumes(plan_ct)


@pytest.mark.parametrize("shift, rot, seed", [
    ((8.0, 4.0, -6.0), (2.0, 0.0, -1.0), 1),
    ((-3.0, 6.0, 2.0), (-1.0, 1.5, 1.0), 2),
])
def test_kv_pair_recovers_setup_error_within_1mm_and_half_degree(
    phantom, volumes, shift, rot, seed,  # type: ignore[no-untyped-def]
) -> None:
    truth = _true_t(shift, rot)
    images = kv_through_transform(phantom, truth, ISO, "HFS", np.random.default_rng(seed),
                                  PAIR, voxel_mm=2.0)
    result = register_2d3d(volumes, [KvView.from_sitk(i) for i in images], ISO, "HFS")
    mm, deg = _errors(result.matrix, truth)
    assert result.converged, result.reason
    assert mm <= 1.0 and deg <= 0.5, (mm, deg)


def test_oblique_pair_for_feet_first_supine_recovers_setup_error(phantom, volumes) -> None:  # type: ignore[no-untyped-def]
    oblique = (KvGeometry(angle_deg=45.0, size_px=(256, 256), pixel_mm=1.2),
               KvGeometry(angle_deg=315.0, size_px=(256, 256), pixel_mm=1.2))
    truth = _true_t((4.0, -3.0, 6.0), (1.0, -1.5, 1.0), "FFS")
    images = kv_through_transform(phantom, truth, ISO, "FFS", np.random.default_rng(3),
                                  oblique, voxel_mm=2.0)
    result = register_2d3d(volumes, [KvView.from_sitk(i) for i in images], ISO, "FFS")
    mm, deg = _errors(result.matrix, truth)
    assert result.converged, result.reason
    assert mm <= 1.0 and deg <= 0.5, (mm, deg)


def test_views_at_the_same_angle_are_refused(volumes) -> None:  # type: ignore[no-untyped-def]
    view = KvView(np.zeros((256, 256), np.float32), PAIR[0])
    with pytest.raises(ValueError, match="less than 20 deg apart"):
        register_2d3d(volumes, [view, view], ISO, "HFS")


def test_single_view_is_refused(volumes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 2 kV views"):
        register_2d3d(volumes, [KvView(np.zeros((256, 256), np.float32), PAIR[0])], ISO, "HFS")


def test_featureless_kv_images_are_not_trusted(volumes) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    views = [KvView(rng.normal(size=(256, 256)).astype(np.float32), g) for g in PAIR]
    result = register_2d3d(volumes, views, ISO, "HFS")
    assert not result.converged
    assert result.reason
