"""The QA phantom's fiducials: imaging.qa_air_holes.find_air_hole (dark spheres) and the
fiducial-based QA measurement of the registration worker (`_qa_shift_files`: BB + three
air holes, rigid fit) on the simulator's QA CBCTs, against the simulator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from daemon.qa_phantom_geometry import holes_from_bb
from daemon.registration_worker import _qa_bb_file, _qa_shift_files
from imaging.qa_air_holes import find_air_hole
from safety.pose import Pose
from sim.imager import acquire_cbct
from sim.qa_phantom import (
    AIR_HOLES,
    QA_ISO_MM,
    QA_PATIENT_POSITION,
    QaPhantomSpec,
    default_pivot,
    image_point,
    lay_phantom,
    make_qa_phantom,
    room_point,
    table_top_for,
)

SPEC = QaPhantomSpec()
PIVOT = default_pivot()
# A repeatability draw of sim/rooms/imperfect.json: the phantom laid at a home pose
# hundredths off the start pose (this used to bias an image registration's pitch 0.2 deg).
HOME = Pose(-0.03, 0.02, -0.036, 0.0, 0.011, -0.007)
PLACEMENT = lay_phantom(HOME, (0.0, 0.0, 0.0), PIVOT)


def _cbct(pose: Pose, seed: int) -> sitk.Image:
    return acquire_cbct(make_qa_phantom(SPEC), PLACEMENT, pose, PIVOT, QA_ISO_MM,
                        QA_PATIENT_POSITION, np.random.default_rng(seed),
                        table_top=table_top_for(PLACEMENT))


def _true_image_mm(pose: Pose, planning_mm: tuple[float, float, float]) -> np.ndarray:
    return np.array(image_point(room_point(PLACEMENT, pose, planning_mm, PIVOT)))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, sitk.Image]:
    img = _cbct(HOME, 1)
    path = tmp_path_factory.mktemp("qa") / "baseline.mha"
    sitk.WriteImage(img, str(path))
    return str(path), img


def test_each_air_hole_is_found_to_a_fraction_of_a_voxel(
        baseline: tuple[str, sitk.Image]) -> None:
    _, img = baseline
    for centre, radius in AIR_HOLES:
        truth = _true_image_mm(HOME, centre)
        found = find_air_hole(img, tuple(truth + (2.0, -3.0, 1.5)), radius, 10.0)
        assert np.linalg.norm(np.array(found.position_mm) - truth) < 0.08, (centre, found)
        assert found.background_hu - found.air_hu > 700


def test_no_hole_within_the_search_is_refused_in_one_line(
        baseline: tuple[str, sitk.Image]) -> None:
    _, img = baseline
    with pytest.raises(ValueError, match=r"^no air hole found within 10 mm of") as err:
        find_air_hole(img, (0.0, 20.0, 0.0), 5.0, 10.0)  # solid acrylic there
    assert "\n" not in str(err.value)


def _two_holes(gap_mm: float, radius_mm: float = 4.0) -> sitk.Image:
    rng = np.random.default_rng(5)
    shape = (50, 80, 80)  # z, y, x; voxels 1 x 1 x 1.6 mm
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    pz, py, px = (z - 24.5) * 1.6, y - 39.5, x - 39.5
    hu = np.full(shape, 150.0)
    for cx in (-gap_mm / 2.0, gap_mm / 2.0):
        d = np.sqrt((px - cx) ** 2 + py ** 2 + pz ** 2)
        hu -= 1050.0 * np.clip(radius_mm + 0.5 - d, 0.0, 1.0)
    img = sitk.GetImageFromArray((hu + rng.normal(0.0, 25.0, shape)).astype(np.float32))
    img.SetSpacing((1.0, 1.0, 1.6))
    img.SetOrigin((-39.5, -39.5, -24.5 * 1.6))
    return img


def test_two_holes_within_the_search_are_refused_naming_both() -> None:
    img = _two_holes(14.0)
    with pytest.raises(ValueError, match=r"^found 2 air-hole-like objects within 12 mm") as err:
        find_air_hole(img, (0.0, 0.0, 0.0), 4.0, 12.0)
    assert "\n" not in str(err.value)
    one = find_air_hole(img, (7.5, 1.0, 0.0), 4.0, 5.0)  # a tighter search sees one
    assert np.allclose(one.position_mm, (7.0, 0.0, 0.0), atol=0.1)


@pytest.mark.parametrize("delta", [
    Pose(10.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    Pose(0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    Pose(0.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    Pose(0.0, 0.0, 0.0, -2.5, 0.0, 0.0),
    Pose(0.05, -0.05, 0.046, 0.0, -0.021, 0.027),  # a return home, hundredths off
])
def test_the_fiducial_fit_measures_the_true_couch_motion(
        baseline: tuple[str, sitk.Image], tmp_path: Path, delta: Pose) -> None:
    path, _ = baseline
    bb_room = SPEC.bb_offset_mm
    bb = _qa_bb_file(path, (bb_room[0], -bb_room[2], bb_room[1]), 40.0).position_mm
    moved = tmp_path / "moved.mha"
    sitk.WriteImage(_cbct(HOME.plus(delta), 7), str(moved))
    got = _qa_shift_files(path, str(moved), bb, bb_room, HOME.as_tuple(), PIVOT,
                          holes_from_bb(bb_room))
    err = np.array(got.couch) - np.array(delta.as_tuple())
    assert np.abs(err[:3]).max() < 0.1, err  # mm
    assert np.abs(err[3:]).max() < 0.05, err  # deg
    assert got.converged and 0.0 <= got.metric < 0.1 and len(got.fiducials_mm) == 4


def test_a_measurement_without_the_air_holes_is_refused(
        baseline: tuple[str, sitk.Image]) -> None:
    path, _ = baseline
    with pytest.raises(ValueError, match="at least 2 air holes"):
        _qa_shift_files(path, path, (4.0, -2.5, -3.0), (4.0, -3.0, 2.5), HOME.as_tuple(),
                        PIVOT, ())
