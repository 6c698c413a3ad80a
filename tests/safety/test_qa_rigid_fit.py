"""safety.qa_geometry.rigid_fit: the least-squares rigid motion of a QA phantom's fiducials."""

from __future__ import annotations

import numpy as np
import pytest

from safety.geometry import rotation_from_angles
from safety.qa_geometry import rigid_fit, room_shift_from_registration

# A BB and three air holes of the QA phantom (image frame, mm).
POINTS = np.array([(4.0, -2.5, -3.0), (-45.0, 35.0, 50.0), (50.0, -40.0, -35.0),
                   (-35.0, -50.0, -50.0)])


def _moved(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(POINTS @ r.T + t)


def test_a_known_rotation_and_translation_are_recovered() -> None:
    r = rotation_from_angles(1.5, -2.0, 0.7)
    t = np.array([3.0, -7.0, 12.0])
    fit = rigid_fit(POINTS, _moved(r, t))
    assert np.allclose(fit.matrix[:3, :3], r, atol=1e-12)
    assert np.allclose(fit.matrix[:3, 3], t, atol=1e-10)
    assert fit.matrix[3].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert fit.rms_mm < 1e-9 and fit.max_residual_mm < 1e-9
    shift = room_shift_from_registration(fit.matrix, "HFS", POINTS[0])
    assert np.all(np.isfinite(shift.as_tuple()))


def test_noise_of_a_few_hundredths_costs_a_few_hundredths_of_a_degree() -> None:
    rng = np.random.default_rng(0)
    r = rotation_from_angles(0.0, 1.0, 0.0)
    noisy = _moved(r, np.zeros(3)) + rng.normal(0.0, 0.03, POINTS.shape)
    fit = rigid_fit(POINTS, noisy)
    angle = np.degrees(np.arccos((np.trace(fit.matrix[:3, :3] @ r.T) - 1.0) / 2.0))
    assert angle < 0.05 and 0.0 < fit.rms_mm < 0.1


def test_a_misfound_marker_is_refused_in_one_line() -> None:
    to = _moved(np.eye(3), np.array([1.0, 2.0, 3.0]))
    to[2] += (0.0, 4.0, 0.0)  # another dark spot taken for hole 2
    with pytest.raises(ValueError, match=r"residual RMS .* exceeds 0.5 mm \(point 2") as err:
        rigid_fit(POINTS, to)
    assert "\n" not in str(err.value)
    assert rigid_fit(POINTS, to, max_rms_mm=5.0).rms_mm > 0.5


@pytest.mark.parametrize(("a", "b", "match"), [
    (POINTS[:2], POINTS[:2], "at least 3 points"),
    (POINTS, POINTS[:3], "as many points_to"),
    ([(0, 0, 0), (1, 1, 1), (2, 2, 2)], [(0, 0, 0), (1, 1, 1), (2, 2, 2)], "on one line"),
    ([(0, 0, 0), (1, 0, 0), (0, float("nan"), 0)], POINTS[:3], "not a finite"),
    ("abc", POINTS, "list of points"),
])
def test_bad_input_is_refused(a: object, b: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rigid_fit(a, b)
