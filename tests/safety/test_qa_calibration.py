"""Calibration (safety.qa_calibration): compensate is the exact inverse of the simulated
room's couch model, the identity changes nothing (bit for bit), proposals come from QA."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.geometry import orientation_matrix
from safety.policy import VerdictPolicy
from safety.pose import AXES, Pose
from safety.qa import QaMeasurement, evaluate_daily, qa_pattern
from safety.qa_calibration import (
    Calibration,
    compensate,
    correct_registration_matrix,
    correct_registration_shift,
    predict_real,
)
from safety.qa_calibration_proposal import propose_calibration
from safety.qa_sag import SagModel
from sim.room_imperfections import Imperfections, Sag

IDENTITY = Calibration.identity()

any_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
poses = st.builds(Pose, *(any_floats for _ in AXES))
targets = st.builds(
    Pose, st.floats(-250, 250), st.floats(-600, 600), st.floats(-400, 200),
    st.floats(-95, 95), st.floats(-3, 3), st.floats(-3, 3))
scales = st.dictionaries(st.sampled_from(AXES), st.floats(-0.05, 0.05), max_size=6)
mm_offsets = st.floats(-5, 5)
deg_offsets = st.floats(-1, 1)


@st.composite
def offsets(draw) -> dict[str, float]:
    out = {}
    for axis in draw(st.lists(st.sampled_from(AXES), unique=True, max_size=6)):
        out[axis] = draw(deg_offsets if axis in ("yaw", "pitch", "roll") else mm_offsets)
    return out


sags = st.builds(Sag, mm_per_m=st.floats(0, 10), mm_per_m_per_100kg=st.floats(0, 10),
                 deg_per_m=st.floats(0, 1), deg_per_m_per_100kg=st.floats(0, 1))
iso_offsets = st.tuples(*(st.floats(-5, 5) for _ in range(3)))


def both(scale, offset, sag, iso=(0.0, 0.0, 0.0)) -> tuple[Calibration, Imperfections]:
    cal = Calibration(iso, scale, offset,
                      SagModel(sag.mm_per_m, sag.mm_per_m_per_100kg, sag.deg_per_m,
                               sag.deg_per_m_per_100kg), 3)
    room = Imperfections(imaging_iso_offset_mm=iso, axis_scale=scale, axis_offset=offset, sag=sag)
    return cal, room


# --------------------------------------------------------------------------- identity


@given(pose=poses, load=st.floats(0, 300))
def test_identity_compensation_returns_the_target_bit_for_bit(pose: Pose, load: float) -> None:
    out = compensate(pose, IDENTITY, load)
    assert out is pose
    assert [v.hex() for v in out] == [v.hex() for v in pose]
    assert predict_real(pose, IDENTITY, load) is pose


def test_identity_keeps_negative_zero_and_exact_values() -> None:
    pose = Pose(-0.0, 0.1, 1e-300, 0.30000000000000004, -2.9999999999999996, 5e-324)
    out = compensate(pose, IDENTITY, 80.0)
    assert [v.hex() for v in out] == [v.hex() for v in pose]
    assert math.copysign(1.0, out.lat) == -1.0


@given(shift=st.tuples(any_floats, any_floats, any_floats))
def test_identity_registration_shift_is_unchanged(shift) -> None:
    out = correct_registration_shift(shift, IDENTITY)
    assert [v.hex() for v in out] == [float(v).hex() for v in shift]


def test_identity_registration_matrix_is_unchanged() -> None:
    rng = np.random.default_rng(1)
    t = np.eye(4)
    t[:3, 3] = rng.normal(0, 10, 3)
    out = correct_registration_matrix(t, "HFS", IDENTITY)
    assert out.tobytes() == t.tobytes()
    assert out is not t  # a copy: the caller's array is never changed


def test_a_zero_sag_model_or_zero_terms_are_no_terms() -> None:
    cal = Calibration((0.0, 0.0, 0.0), {"lat": 0.0}, {"yaw": 0.0}, SagModel(0, 0, 0, 0), 4)
    assert cal.is_identity and cal.axis_scale == {} and cal.axis_offset == {}
    pose = Pose(1.1, 2.2, 3.3, 0.4, 0.5, 0.6)
    assert compensate(pose, cal, 100.0) is pose


def test_a_calibration_of_one_axis_leaves_the_others_exact() -> None:
    cal = Calibration(axis_scale={"vert": 0.008})
    pose = Pose(0.1, 0.2, -100.0, 0.30000000000000004, 0.5, -0.7)
    out = compensate(pose, cal, 0.0)
    for axis in ("lat", "long", "yaw", "pitch", "roll"):
        assert out.get(axis).hex() == pose.get(axis).hex()
    assert out.vert == pytest.approx(-100.0 / 1.008)


# --------------------------------------------------------------------------- inverse


@given(target=targets, scale=scales, offset=offsets(), sag=sags, load=st.floats(0, 300))
def test_compensate_then_the_simulated_room_reaches_the_target(
        target, scale, offset, sag, load) -> None:
    cal, room = both(scale, offset, sag)
    reported = compensate(target, cal, load)
    real = room.true_pose(reported, load)
    np.testing.assert_allclose(real.as_tuple(), target.as_tuple(), atol=1e-9, rtol=0)


@given(reported=targets, scale=scales, offset=offsets(), sag=sags, load=st.floats(0, 300))
def test_predict_real_is_the_simulated_rooms_model(reported, scale, offset, sag, load) -> None:
    cal, room = both(scale, offset, sag)
    np.testing.assert_allclose(predict_real(reported, cal, load).as_tuple(),
                               room.true_pose(reported, load).as_tuple(), atol=1e-12, rtol=0)
    back = compensate(predict_real(reported, cal, load), cal, load)
    np.testing.assert_allclose(back.as_tuple(), reported.as_tuple(), atol=1e-9, rtol=0)


def test_worked_example_vert_scale_and_sag() -> None:
    # vert travels 0.8 % more than reported; 2 mm/m + 1 mm/m per 100 kg sag.
    cal = Calibration(axis_scale={"vert": 0.008}, sag=SagModel(2.0, 1.0, 0.0, 0.0))
    out = compensate(Pose(long=500.0, vert=-100.0), cal, 100.0)
    # drop = (2 + 1) * 0.5 = 1.5 mm; reported vert = (-100 + 1.5) / 1.008
    assert out.long == 500.0
    assert out.vert == pytest.approx(-98.5 / 1.008, abs=1e-12)


def test_bad_compensation_input_is_refused_in_one_line() -> None:
    cal = Calibration(axis_scale={"vert": 0.008})
    with pytest.raises(ValueError, match=r"^target pitch is not a finite number: nan deg$"):
        compensate(Pose(pitch=float("nan")), cal, 0.0)
    with pytest.raises(ValueError, match=r"^load_kg is not a finite number: inf kg$"):
        compensate(Pose(), cal, math.inf)
    with pytest.raises(ValueError, match=r"^load_kg -1 kg must not be negative"):
        compensate(Pose(), IDENTITY, -1.0)
    with pytest.raises(ValueError, match=r"^shift_mm y is not a finite number: nan mm$"):
        correct_registration_shift((0.0, float("nan"), 0.0), IDENTITY)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"axis_scale": {"vert": 0.08}}, "axis_scale vert 0.08 is outside +-0.05"),
    ({"axis_scale": {"height": 0.01}}, "axis_scale: unknown couch axis 'height'"),
    ({"axis_scale": {"lat": float("nan")}}, "axis_scale lat is not a finite number: nan fraction"),
    ({"axis_offset": {"yaw": 1.5}}, "axis_offset yaw 1.5 deg is outside +-1 deg"),
    ({"axis_offset": {"lat": float("inf")}}, "axis_offset lat is not a finite number: inf mm"),
    ({"imaging_iso_offset_mm": (0.0, 6.0, 0.0)}, "imaging_iso_offset_mm y 6 mm is outside +-5 mm"),
    ({"imaging_iso_offset_mm": (0.0, 0.0)}, "imaging_iso_offset_mm must be 3 numbers"),
    ({"version": -1}, "calibration version must be an integer >= 0"),
])
def test_implausible_calibrations_are_refused_in_one_line(kwargs, message) -> None:
    with pytest.raises(ValueError) as exc:
        Calibration(**kwargs)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_calibration_json_round_trip() -> None:
    cal = Calibration((0.5, -0.25, 0.1), {"vert": 0.008}, {"yaw": 0.15},
                      SagModel(1.5, 0.8, 0.05, 0.03, 0.02, 0.002), 7)
    d = json.loads(json.dumps(cal.to_json(), allow_nan=False))
    assert Calibration.from_json(d) == cal
    assert Calibration.from_json(IDENTITY.to_json()) == IDENTITY
    with pytest.raises(ValueError, match="unknown fields: extra"):
        Calibration.from_json({**d, "extra": 1})


# --------------------------------------------------------------------------- imaging iso


def test_registration_shift_correction_adds_the_imaging_iso_offset() -> None:
    # An object truly at the treatment isocentre appears at -o: corrected, it is at 0.
    cal = Calibration(imaging_iso_offset_mm=(0.7, -0.3, 0.2))
    assert correct_registration_shift((-0.7, 0.3, -0.2), cal) == pytest.approx((0, 0, 0))


def test_registration_matrix_correction_moves_the_planned_correction_by_the_offset() -> None:
    """A patient truly 3 mm off in room X, seen through an imager 0.7 mm off: the
    corrected matrix plans the true 3 mm, the raw one 2.3 mm."""
    iso = np.array([10.0, -20.0, 30.0])
    o = np.array([0.7, 0.0, 0.0])
    cal = Calibration(imaging_iso_offset_mm=tuple(o))
    model = CouchModel.default()
    for position in ("HFS", "FFP", "HFDL"):
        m = orientation_matrix(position)
        seen = np.array([3.0, 0.0, 0.0]) - o  # room displacement as the image shows it
        t = np.eye(4)
        t[:3, 3] = m.T @ seen
        raw = plan_correction(t, iso, position, Pose(), model, VerdictPolicy())
        fixed = plan_correction(correct_registration_matrix(t, position, cal), iso, position,
                                Pose(), model, VerdictPolicy())
        assert raw.delta.lat == pytest.approx(-2.3)
        assert fixed.delta.lat == pytest.approx(-3.0)


# --------------------------------------------------------------------------- proposal


def simulated_daily(scale: dict[str, float], iso=(0.3, -0.2, 0.1), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    steps, returns = [], []
    for pose in qa_pattern():
        real = Pose(**{a: pose.get(a) * (1.0 + scale.get(a, 0.0)) + rng.normal(0, noise)
                       if noise else pose.get(a) * (1.0 + scale.get(a, 0.0)) for a in AXES})
        (returns if pose == Pose() else steps).append(QaMeasurement(pose, real))
    return evaluate_daily(iso, steps, returns)


def test_proposal_recovers_a_vert_scale_and_the_iso_offset() -> None:
    daily = simulated_daily({"vert": 0.008})
    sag = SagModel(1.5, 0.8, 0.05, 0.03)
    cal = propose_calibration(daily, sag)
    assert cal.axis_scale == {"vert": pytest.approx(0.008, abs=1e-12)}
    assert cal.imaging_iso_offset_mm == (0.3, -0.2, 0.1)
    assert cal.sag == sag and cal.axis_offset == {} and cal.version == 1


def test_proposal_with_noise_keeps_only_significant_scales() -> None:
    daily = simulated_daily({"vert": 0.03}, noise=0.03, seed=5)
    cal = propose_calibration(daily)
    assert set(cal.axis_scale) == {"vert"}
    assert cal.axis_scale["vert"] == pytest.approx(0.03, abs=0.01)


def test_proposal_builds_on_the_previous_calibration() -> None:
    prev = Calibration((0.1, 0.1, 0.1), {"yaw": 0.01}, {"yaw": 0.15}, SagModel(1, 1, 0, 0), 4)
    steps = [QaMeasurement(Pose(vert=10), Pose(vert=10.08)),
             QaMeasurement(Pose(vert=-10), Pose(vert=-10.08))]
    daily = evaluate_daily((0.2, 0.0, 0.0), steps, [QaMeasurement(Pose(), Pose())])
    cal = propose_calibration(daily, previous=prev)
    assert cal.version == 5
    assert cal.axis_scale == {"yaw": 0.01, "vert": pytest.approx(0.008)}  # yaw not measured
    assert cal.axis_offset == {"yaw": 0.15} and cal.sag == prev.sag
    assert cal.imaging_iso_offset_mm == (0.2, 0.0, 0.0)
    assert propose_calibration(daily, previous=prev, axis_offset={}, version=9).axis_offset == {}


def test_a_couch_5_percent_off_needs_service_not_a_calibration() -> None:
    steps = [QaMeasurement(Pose(lat=10), Pose(lat=10.7))]
    daily = evaluate_daily((0, 0, 0), steps, [QaMeasurement(Pose(), Pose())])
    with pytest.raises(ValueError, match=r"^lat travel is off by \+7\.00 % .*limit \+-5 %"):
        propose_calibration(daily)
