"""The QA cube phantom (sim/qa_phantom.py): its HU levels, and its BB found in a simulated
CBCT where the room puts it, shifted by minus the imaging isocentre offset.

The BB is found here with a plain intensity-weighted centroid; igrtd's finder is
imaging/qa_bb.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from safety.pose import Pose
from sim.imager import acquire_cbct
from sim.qa_phantom import (
    AIR_HOLES,
    BB_DIAMETER_MM,
    BB_HU,
    CUBE_HU,
    QA_ISO_MM,
    QA_PATIENT_POSITION,
    QaPhantomSpec,
    bb_planning_mm,
    bb_room_mm,
    default_pivot,
    image_point,
    lay_phantom,
    make_qa_phantom,
    room_point,
    table_top_for,
)
from sim.room_imperfections import Imperfections

SPEC = QaPhantomSpec()
PIVOT = default_pivot()


def _cbct(placement: np.ndarray, pose: Pose, seed: int = 3) -> sitk.Image:
    return acquire_cbct(make_qa_phantom(SPEC), placement, pose, PIVOT, QA_ISO_MM,
                        QA_PATIENT_POSITION, np.random.default_rng(seed),
                        table_top=table_top_for(placement))


def _bb_centroid(image: sitk.Image, near_mm: Sequence[float],
                 half_mm: float = 10.0) -> tuple[np.ndarray, float, int]:
    """(centroid mm, peak HU, voxels above threshold) of the brightest blob near a point:
    weights HU - background above background + 400 HU in a box around `near_mm`."""
    arr = sitk.GetArrayFromImage(image).astype(float)  # (z, y, x)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    centre = np.rint((np.asarray(near_mm) - origin) / spacing).astype(int)
    r = np.ceil(half_mm / spacing).astype(int)
    lo, hi = centre - r, centre + r + 1
    block = arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    background = float(np.median(block))
    w = np.where(block > background + 400.0, block - background, 0.0)
    k, j, i = np.nonzero(w)
    weights = w[k, j, i]
    idx = np.stack([i + lo[0], j + lo[1], k + lo[2]], axis=1)
    centroid = origin + spacing * (weights @ idx) / weights.sum()
    return centroid, float(block.max()), int(weights.size)


def test_hu_levels_of_the_phantom() -> None:
    ph = make_qa_phantom(SPEC)
    bb = np.asarray(bb_planning_mm(SPEC))
    hole, _ = AIR_HOLES[0]
    # (Not at a sphere's exact centre: sim/phantom.py's approximate distance is 0 there.)
    near = np.array([0.3, -0.2, 0.4])
    pts = np.array([[0.0, 0.0, 0.0], bb + near, bb + [BB_DIAMETER_MM / 2 + 1.0, 0.0, 0.0],
                    np.asarray(hole) + near, [79.0, -79.0, 79.0], [82.0, 0.0, 0.0],
                    [0.0, 0.0, -90.0]])
    hu = ph.evaluate(pts)
    assert hu.tolist() == pytest.approx([CUBE_HU, BB_HU, CUBE_HU, -1000.0, CUBE_HU,
                                         -1000.0, -1000.0])
    # bb_offset_mm is along the room axes; the phantom's HFS planning frame is
    # M^-1 room = (x, -z, y).
    assert tuple(bb) == (4.0, -2.5, -3.0)


def test_laid_at_the_lasers_the_bb_is_at_its_offset_whatever_the_couch() -> None:
    for real in (Pose(), Pose(3.0, 40.0, -20.0, 0.15, -0.05, 0.02)):
        placement = lay_phantom(real, pivot=PIVOT)
        assert bb_room_mm(placement, real, SPEC) == pytest.approx((4.0, -3.0, 2.5), abs=1e-9)
        assert room_point(placement, real, (0.0, 0.0, 0.0)) == pytest.approx((0, 0, 0),
                                                                              abs=1e-9)
    placement = lay_phantom(Pose(), (0.0, -300.0, 0.0))
    assert bb_room_mm(placement, Pose(long=300.0), SPEC) == pytest.approx((4.0, -3.0, 2.5))


def test_the_bb_survives_the_cbct_and_is_where_the_room_puts_it() -> None:
    placement = lay_phantom(Pose(), pivot=PIVOT)
    image = _cbct(placement, Pose())
    expected = image_point((4.0, -3.0, 2.5))
    assert expected == (4.0, -2.5, -3.0)
    found, peak, voxels = _bb_centroid(image, expected)
    assert peak > 2000.0 and voxels >= 10
    assert found == pytest.approx(expected, abs=0.15)
    # The cube reads acrylic-like, the outside air, after the CBCT's gain and offset.
    arr = sitk.GetArrayFromImage(image)
    cube = arr[50 - 10:50 + 10, 120 - 30:120 + 30, 120 + 20:120 + 60]
    assert 0.0 < float(np.median(cube)) < 260.0
    assert float(np.median(arr[:, :10, 110:130])) < -700.0  # air above the cube


@pytest.mark.parametrize("offset", [(0.7, 0.0, 0.0), (0.0, -0.5, 0.4)])
def test_an_imaging_isocentre_offset_shifts_the_bb_by_minus_the_offset(
        offset: tuple[float, float, float]) -> None:
    placement = lay_phantom(Pose(), pivot=PIVOT)
    imp = Imperfections(imaging_iso_offset_mm=offset)
    plain, _, _ = _bb_centroid(_cbct(placement, Pose()), image_point((4.0, -3.0, 2.5)))
    seen = imp.imaging_shift((4.0, -3.0, 2.5))
    shifted, _, _ = _bb_centroid(_cbct(placement, imp.imaging_pose(Pose())), image_point(seen))
    assert shifted == pytest.approx(image_point(seen), abs=0.15)
    # In room terms (room = (qx, qz, -qy) for HFS about 0) the BB moved by -offset.
    moved = shifted - plain
    room_moved = (moved[0], moved[2], -moved[1])
    assert room_moved == pytest.approx(tuple(-o for o in offset), abs=0.1)


def test_the_bb_follows_the_real_couch_pose() -> None:
    placement = lay_phantom(Pose(), pivot=PIVOT)
    real = Pose(8.0, -12.0, 5.0, 1.0, -0.4, 0.3)
    bb = bb_room_mm(placement, real, SPEC)
    assert bb != pytest.approx((4.0, -3.0, 2.5), abs=1.0)
    found, _, _ = _bb_centroid(_cbct(placement, real), image_point(bb))
    assert found == pytest.approx(image_point(bb), abs=0.15)


def test_igrtds_constant_describes_the_same_air_holes_as_the_simulated_phantom() -> None:
    # igrtd finds the holes (fiducials of its QA measurement) where daemon/qa_phantom_geometry.py
    # says the room's phantom has them; the simulator must build that phantom.
    from daemon.qa_phantom_geometry import QA_PHANTOM_AIR_HOLES, holes_from_bb

    assert QA_PHANTOM_AIR_HOLES == AIR_HOLES
    bb = np.array(bb_planning_mm(SPEC))
    for (offset, r), (centre, r_sim) in zip(holes_from_bb(SPEC.bb_offset_mm), AIR_HOLES,
                                            strict=True):
        assert np.allclose(np.array(offset) + bb, centre) and r == r_sim
