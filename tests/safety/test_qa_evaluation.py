"""Daily QA evaluation (safety.qa, safety.qa_tolerances): TG-142 profiles, checks that
name value, limit and unit, and the geometry from a registration to a couch motion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.geometry import PatientPosition, orientation_matrix, pose_transform
from safety.pose import AXES, Pose
from safety.qa import DailyQaResult, QaMeasurement, evaluate_daily, qa_pattern
from safety.qa_geometry import (
    couch_delta_from_room_shift,
    couch_motion_from_registration,
    iso_offset_from_bb,
    room_shift_for_couch_delta,
    room_shift_from_registration,
)
from safety.qa_tolerances import PROFILES, Profile, resolve_profile

PIVOT = (0.0, 0.0, -150.0)  # the default couch model's
CONV, SRS = PROFILES["conventional"], PROFILES["srs"]


def daily(iso=(0.0, 0.0, 0.0), step_errors: dict[str, float] | None = None,
          return_errors: dict[str, float] | None = None, profile: Profile | str = CONV
          ) -> DailyQaResult:
    """The daily pattern measured perfectly, except for errors added to the first
    step's and the first return's measurements."""
    steps, returns = [], []
    for pose in qa_pattern():
        if pose == Pose():
            errors = return_errors if not returns else None
            measured = pose.plus(Pose(**(errors or {})))
            returns.append(QaMeasurement(pose, measured, f"home {len(returns) + 1}"))
        else:
            errors = step_errors if not steps else None
            measured = pose.plus(Pose(**(errors or {})))
            steps.append(QaMeasurement(pose, measured, f"step {len(steps) + 1}"))
    return evaluate_daily(iso, steps, returns, profile)


# --------------------------------------------------------------------------- profiles


def test_profiles_are_the_tg142_defaults() -> None:
    assert CONV.model_dump() == {
        "name": "conventional", "iso_coincidence_mm": 2.0, "couch_positioning_mm": 1.0,
        "repeatability_mm": 1.0, "rotation_deg": 1.0, "sag_mm": 2.0,
    }
    assert SRS.model_dump() == {
        "name": "srs", "iso_coincidence_mm": 1.0, "couch_positioning_mm": 1.0,
        "repeatability_mm": 0.5, "rotation_deg": 0.5, "sag_mm": 2.0,
    }


def test_profile_overrides_from_config() -> None:
    p = resolve_profile("srs", {"repeatability_mm": 0.7})
    assert p.repeatability_mm == 0.7 and p.iso_coincidence_mm == 1.0 and p.name == "srs"
    assert resolve_profile("conventional") is CONV


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("tight", None, "unknown QA profile 'tight' (expected one of conventional, srs)"),
    ("srs", {"iso_mm": 1.0}, "unknown QA tolerance 'iso_mm'"),
    ("srs", {"rotation_deg": float("nan")},
     "QA tolerance rotation_deg nan deg must be greater than 0 deg and at most 3 deg"),
    ("srs", {"repeatability_mm": 0.0},
     "QA tolerance repeatability_mm 0.0 mm must be greater than 0 mm and at most 5 mm"),
    ("srs", {"couch_positioning_mm": "1"}, "QA tolerance couch_positioning_mm must be a number"),
])
def test_unusable_profile_config_is_one_line(name, overrides, message) -> None:
    with pytest.raises(ValueError) as exc:
        resolve_profile(name, overrides)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_profile_refuses_infinity() -> None:
    with pytest.raises(ValueError):
        Profile(iso_coincidence_mm=float("inf"))


# --------------------------------------------------------------------------- pattern


def test_daily_pattern_is_plus_home_minus_home_per_axis() -> None:
    pattern = qa_pattern(step_mm=10.0, step_deg=1.0)
    assert len(pattern) == 24
    assert pattern[:4] == [Pose(lat=10.0), Pose(), Pose(lat=-10.0), Pose()]
    assert pattern[12:16] == [Pose(yaw=1.0), Pose(), Pose(yaw=-1.0), Pose()]
    assert qa_pattern(5.0, 0.5, axes=("vert",)) == [Pose(vert=5.0), Pose(), Pose(vert=-5.0), Pose()]
    with pytest.raises(ValueError, match=r"^step_mm is not a finite number: inf mm$"):
        qa_pattern(step_mm=math.inf)
    with pytest.raises(ValueError, match=r"^step_deg -1 deg must be greater than 0 deg$"):
        qa_pattern(step_deg=-1.0)


# --------------------------------------------------------------------------- evaluation


def test_a_perfect_couch_passes_every_check_of_both_profiles() -> None:
    for profile in (CONV, SRS):
        r = daily(profile=profile)
        assert r.passed and r.failures == []
        assert [(c.name, c.axis) for c in r.checks] == [("iso_coincidence", "vector")] + [
            (n, a) for n in ("positioning", "repeatability") for a in AXES]
        assert r.axes_tested == AXES


def test_a_0_7_mm_iso_offset_is_reported_as_0_7() -> None:
    r = daily(iso=(0.7, 0.0, 0.0))
    c = r.check("iso_coincidence", "vector")
    assert c.value == 0.7 and c.limit == 2.0 and c.unit == "mm" and c.passed
    assert c.message == "iso coincidence vector: 0.70 mm within limit 2.00 mm"
    assert r.to_json()["checks"][0]["value"] == 0.7
    assert r.to_json()["iso_offset_mm"] == [0.7, 0.0, 0.0]


def test_iso_offset_is_the_vector_length() -> None:
    c = daily(iso=(0.6, -0.8, 0.0), profile=SRS).check("iso_coincidence", "vector")
    assert c.value == pytest.approx(1.0) and c.passed  # 1.0 <= 1.0
    r = daily(iso=(0.9, 0.9, 0.0), profile=SRS)
    assert not r.passed
    assert r.failures == ["iso coincidence vector: 1.27 mm exceeds limit 1.00 mm"]


@pytest.mark.parametrize(("kind", "errors", "conventional", "srs", "srs_message"), [
    ("step", {"lat": 0.7}, True, True, None),
    ("step", {"vert": -1.2}, False, False, "positioning vert: 1.20 mm exceeds limit 1.00 mm"),
    ("return", {"long": 0.7}, True, False, "repeatability long: 0.70 mm exceeds limit 0.50 mm"),
    ("step", {"yaw": 0.7}, True, False, "positioning yaw: 0.70 deg exceeds limit 0.50 deg"),
    ("return", {"roll": -0.6}, True, False, "repeatability roll: 0.60 deg exceeds limit 0.50 deg"),
    ("return", {"pitch": 1.01}, False, False,
     "repeatability pitch: 1.01 deg exceeds limit 0.50 deg"),
])
def test_pass_and_fail_per_profile_name_value_limit_and_unit(
        kind, errors, conventional, srs, srs_message) -> None:
    kw = {"step_errors": errors} if kind == "step" else {"return_errors": errors}
    (axis, err), = errors.items()
    conv_r, srs_r = daily(**kw, profile=CONV), daily(**kw, profile=SRS)
    assert conv_r.passed is conventional and srs_r.passed is srs
    name = "positioning" if kind == "step" else "repeatability"
    assert conv_r.check(name, axis).value == pytest.approx(abs(err))
    per_axis = conv_r.accuracy if kind == "step" else conv_r.repeatability
    assert per_axis[axis] == pytest.approx(abs(err))
    if srs_message:
        assert srs_r.failures == [srs_message]


def test_a_value_just_over_its_limit_never_prints_as_equal_to_it() -> None:
    r = daily(step_errors={"lat": 1.004})
    assert r.failures == ["positioning lat: 1.004 mm exceeds limit 1.000 mm"]
    assert daily(step_errors={"lat": 1.0}).passed  # at the limit: within (TG-142 "<=")


def test_accuracy_is_the_largest_error_over_the_steps_on_every_axis() -> None:
    steps = [QaMeasurement(Pose(lat=10), Pose(lat=10.3, long=0.2)),
             QaMeasurement(Pose(lat=-10), Pose(lat=-10.5, long=-0.1))]
    r = evaluate_daily((0, 0, 0), steps, [QaMeasurement(Pose(), Pose(vert=0.05))])
    assert r.accuracy["lat"] == pytest.approx(0.5) and r.accuracy["long"] == pytest.approx(0.2)
    assert r.repeatability["vert"] == pytest.approx(0.05)
    assert r.axes_tested == ("lat",)


def test_measured_may_be_six_numbers_or_a_dict() -> None:
    a = QaMeasurement(Pose(lat=10), (10.1, 0, 0, 0, 0, 0))  # type: ignore[arg-type]
    b = QaMeasurement(Pose(lat=10), {"lat": 10.1, "long": 0, "vert": 0, "yaw": 0, "pitch": 0,
                                     "roll": 0})  # type: ignore[arg-type]
    assert a == b and a.error.lat == pytest.approx(0.1)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: QaMeasurement(Pose(lat=10), Pose(lat=float("nan"))),
     "measured lat is not a finite number: nan mm"),
    (lambda: QaMeasurement(Pose(yaw=math.inf), Pose()),
     "commanded yaw is not a finite number: inf deg"),
    (lambda: QaMeasurement(Pose(), (1.0, 2.0)), "measured must be 6 numbers"),
    (lambda: evaluate_daily((0, float("nan"), 0), [QaMeasurement(Pose(lat=1), Pose(lat=1))],
                            [QaMeasurement(Pose(), Pose())]),
     "iso_offset_mm y is not a finite number: nan mm"),
    (lambda: evaluate_daily((0, 0, 0), [], [QaMeasurement(Pose(), Pose())]),
     "daily QA needs at least one step"),
    (lambda: evaluate_daily((0, 0, 0), [QaMeasurement(Pose(lat=1), Pose(lat=1))], []),
     "daily QA needs at least one return to home"),
    (lambda: evaluate_daily((0, 0, 0), [QaMeasurement(Pose(), Pose(), "x")],
                            [QaMeasurement(Pose(), Pose())]),
     "step 1 (x) commands no move: it is a return to home"),
    (lambda: evaluate_daily((0, 0, 0), [QaMeasurement(Pose(lat=1), Pose(lat=1))],
                            [QaMeasurement(Pose(vert=-2), Pose(), "h")]),
     "return 1 (h) is commanded to vert -2.00 mm, not to home"),
    (lambda: evaluate_daily((0, 0, 0), [QaMeasurement(Pose(lat=1), Pose(lat=1))],
                            [QaMeasurement(Pose(), Pose())], "strict"),
     "unknown QA profile 'strict'"),
])
def test_unusable_input_is_refused_in_one_line(build, message) -> None:
    with pytest.raises(ValueError) as exc:
        build()
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_result_json_is_strict_json_and_round_trips() -> None:
    r = daily(iso=(0.3, -0.2, 0.1), step_errors={"lat": 0.4}, return_errors={"yaw": 0.2},
              profile=SRS)
    d = r.to_json()
    text = json.dumps(d, allow_nan=False)
    assert d["passed"] is True and d["profile"] == "srs"
    assert d["tolerances"]["repeatability_mm"] == 0.5
    assert d["accuracy"]["lat"] == 0.4 and d["repeatability"]["yaw"] == 0.2
    assert set(d["checks"][0]) >= {"name", "axis", "value", "limit", "unit", "passed"}
    again = DailyQaResult.from_json(json.loads(text))
    assert again.to_json() == d


# --------------------------------------------------------------------------- geometry

POSITIONS = list(PatientPosition)


def _registration_for(room_motion: np.ndarray, position: str, iso_img: np.ndarray) -> np.ndarray:
    """The ITK matrix (fixed = baseline, moving = later image) of a rigid room motion D,
    images tied to the room by r = M (q - iso_img): T(q) = M^T D(M (q - iso)) + iso."""
    m = orientation_matrix(position)
    to_room = np.eye(4)
    to_room[:3, :3], to_room[:3, 3] = m, -m @ iso_img
    return np.linalg.inv(to_room) @ room_motion @ to_room


def test_pure_translation_in_the_image_is_the_room_shift_through_m() -> None:
    t = np.eye(4)
    t[:3, 3] = (1.0, 2.0, 3.0)  # DICOM x, y, z
    s = room_shift_from_registration(t, "HFS", (10.0, -5.0, 40.0))
    assert s == Pose(1.0, 3.0, -2.0, 0.0, 0.0, 0.0)  # IEC X = x, Y = z, Z = -y


def test_a_1_deg_pitch_carries_the_bb_along_y_but_is_pure_pitch_in_couch_axes() -> None:
    home = Pose(0.0, 0.0, -20.0)
    bb_room = np.array([4.0, -3.0, 2.5])
    d = pose_transform(home.plus(Pose(pitch=1.0)), PIVOT) @ np.linalg.inv(
        pose_transform(home, PIVOT))
    iso_img = np.array([0.0, 0.0, 0.0])
    t = _registration_for(d, "HFS", iso_img)
    bb_img = orientation_matrix("HFS").T @ bb_room + iso_img
    shift = room_shift_from_registration(t, "HFS", bb_img)
    assert shift.pitch == pytest.approx(1.0)
    # the pivot is at room z -170 (table-top -150, vert -20): 172.5 mm under the BB
    assert shift.long == pytest.approx(-172.5 * math.sin(math.radians(1.0)), abs=0.01)  # -3.0
    motion = couch_motion_from_registration(t, "HFS", bb_img, centre_room_mm=bb_room,
                                            home=home, pivot_mm=PIVOT)
    for axis, want in Pose(pitch=1.0).as_dict().items():
        assert motion.get(axis) == pytest.approx(want, abs=1e-9), axis


deltas = st.tuples(*(st.floats(-25, 25) for _ in range(3)), *(st.floats(-3, 3) for _ in range(3)))
homes = st.tuples(st.floats(-200, 200), st.floats(-500, 500), st.floats(-300, 100),
                  st.floats(-90, 90), st.floats(-2, 2), st.floats(-2, 2))
points = st.tuples(*(st.floats(-80, 80) for _ in range(3)))


@given(delta=deltas, home=homes, centre=points, iso=points,
       position=st.sampled_from(POSITIONS))
def test_couch_motion_from_registration_recovers_the_commanded_delta(
        delta, home, centre, iso, position) -> None:
    home_p, delta_p = Pose(*home), Pose(*delta)
    d = pose_transform(home_p.plus(delta_p), PIVOT) @ np.linalg.inv(pose_transform(home_p, PIVOT))
    iso_img = np.array(iso)
    t = _registration_for(d, position, iso_img)
    centre_room = np.array(centre)
    centre_img = orientation_matrix(position).T @ centre_room + iso_img
    got = couch_motion_from_registration(t, position, centre_img, centre_room_mm=centre_room,
                                         home=home_p, pivot_mm=PIVOT)
    np.testing.assert_allclose(got.as_tuple(), delta_p.as_tuple(), atol=1e-7)
    # and the forward model gives back the room shift the registration shows
    shift = room_shift_for_couch_delta(delta_p, home_p, PIVOT, centre_room)
    np.testing.assert_allclose(shift.as_tuple(),
                               room_shift_from_registration(t, position, centre_img).as_tuple(),
                               atol=1e-7)
    np.testing.assert_allclose(
        couch_delta_from_room_shift(shift, home_p, PIVOT, centre_room).as_tuple(),
        delta_p.as_tuple(), atol=1e-7)


def test_iso_offset_sign_an_object_at_iso_appears_at_minus_offset() -> None:
    o = (0.7, -0.4, 0.3)
    m = orientation_matrix("HFS")
    seen = m.T @ (np.zeros(3) - np.array(o))  # treatment iso seen at -o (room), image iso 0
    assert iso_offset_from_bb(seen, (0, 0, 0), "HFS") == pytest.approx(o)
    iso_img = np.array([5.0, 6.0, 7.0])
    assert iso_offset_from_bb(seen + iso_img, (0, 0, 0), "HFS", iso_img) == pytest.approx(o)


def test_registration_input_is_checked() -> None:
    with pytest.raises(ValueError, match="registration matrix must be 4x4"):
        room_shift_from_registration(np.eye(3), "HFS", (0, 0, 0))
    with pytest.raises(ValueError, match=r"^centre_mm z is not a finite number: nan mm$"):
        room_shift_from_registration(np.eye(4), "HFS", (0, 0, float("nan")))
    with pytest.raises(ValueError, match="unknown patient position"):
        room_shift_from_registration(np.eye(4), "SIDEWAYS", (0, 0, 0))


# --------------------------------------------------------------------------- calibration


def _pattern(iso=(0.0, 0.0, 0.0), measured_of=lambda rel: rel, profile: Profile | str = CONV,
             **kwargs) -> DailyQaResult:
    """The daily pattern with each measurement `measured_of(commanded)`."""
    steps, returns = [], []
    for rel in qa_pattern():
        (steps if any(rel.as_tuple()) else returns).append(QaMeasurement(rel, measured_of(rel)))
    return evaluate_daily(iso, steps, returns, profile, **kwargs)


def test_a_1_2_mm_imaging_offset_fails_srs_and_passes_under_its_calibration() -> None:
    from safety.qa_calibration import Calibration

    iso = (0.7, 0.0, 1.2)
    raw = _pattern(iso, profile=SRS)
    assert raw.passed is False
    assert raw.failures == ["iso coincidence vector: 1.39 mm exceeds limit 1.00 mm"]
    cal = Calibration(iso, version=4)
    r = _pattern(iso, profile=SRS, calibration=cal)
    assert r.passed is True and r.calibration_version == 4
    d = r.to_json()
    assert d["iso_offset_mm"] == [0.7, 0.0, 1.2]  # the measured (physical) offset
    assert d["iso_offset_residual_mm"] == [0.0, 0.0, 0.0]  # what the calibrated room sees
    assert d["iso_offset_residual_norm_mm"] == 0.0 and d["calibration_version"] == 4
    assert d["calibration"]["calibration"]["imaging_iso_offset_mm"] == [0.7, 0.0, 1.2]
    assert r.check("iso_coincidence", "vector").value == 0.0
    # A calibration off by 0.5 mm leaves 0.5 mm, judged as such.
    off = _pattern(iso, profile=SRS, calibration=Calibration((0.7, 0.0, 0.7)))
    assert off.iso_offset_residual_mm == pytest.approx((0.0, 0.0, 0.5))
    assert off.check("iso_coincidence", "vector").value == pytest.approx(0.5)


def test_positioning_is_judged_against_the_motion_the_calibration_predicts() -> None:
    from safety.qa_calibration import Calibration
    from safety.qa_sag import SagModel

    # Vertical travel 5 % long, long travel 3 % short, and sag: judged without the
    # calibration a 10 mm step is off by 0.5 / 0.3 mm; under it the couch moves as
    # predicted and what is left is ~0.
    sag = SagModel(a=2e-6, b=1e-8, c=1e-5, d=5e-8)
    cal = Calibration(axis_scale={"vert": 0.05, "long": -0.03}, sag=sag, version=2)
    home, load = Pose(long=150.0, vert=-20.0), 80.0
    from safety.qa_calibration import predict_real

    def real(rel: Pose) -> Pose:
        return predict_real(home.plus(rel), cal, load).minus(predict_real(home, cal, load))

    raw = _pattern(measured_of=real)
    assert raw.accuracy["vert"] == pytest.approx(0.5, abs=0.05)
    assert raw.accuracy["long"] == pytest.approx(0.3, abs=0.05)
    r = _pattern(measured_of=real, calibration=cal, home=home, load_kg=load)
    assert r.passed is True and r.calibration_version == 2
    assert max(r.accuracy.values()) < 1e-9  # the demo residual: well within 0.5 mm / 0.2 deg
    assert r.repeatability == raw.repeatability  # a return to home is predicted as 0
    step = r.to_json()["steps"][0]
    assert set(step) >= {"commanded", "measured", "error", "expected", "residual"}
    assert step["error"] == raw.to_json()["steps"][0]["error"]  # the raw error stays reported
    # Stored and re-read, it is judged the same way (the calibration is part of the result).
    again = DailyQaResult.from_json(json.loads(json.dumps(r.to_json(), allow_nan=False)))
    assert again.to_json() == r.to_json()
    # Far from the predicted motion fails as it would without a calibration.
    bad = _pattern(measured_of=lambda rel: real(rel).plus(Pose(vert=1.2 if rel.vert else 0.0)),
                   calibration=cal, home=home, load_kg=load)
    assert bad.check("positioning", "vert").passed is False


@pytest.mark.parametrize("kwargs", [{}, {"calibration": None}])
def test_without_a_calibration_the_daily_result_is_exactly_as_before(kwargs) -> None:
    from safety.qa_calibration import Calibration

    iso = (0.3, -0.2, 1.1)
    plain = daily(iso=iso, step_errors={"lat": 0.4, "pitch": 0.3},
                  return_errors={"yaw": 0.2}, profile=SRS)
    steps, returns = list(plain.steps), list(plain.returns)
    r = evaluate_daily(iso, steps, returns, SRS, **kwargs)
    assert r == plain and r.checks == plain.checks
    d = r.to_json()
    assert d["calibration_version"] == 0 and d["calibration"] is None
    assert d["iso_offset_residual_mm"] == d["iso_offset_mm"]
    assert all("expected" not in s for s in d["steps"])
    # An identity calibration (and one without a couch term) changes no value either.
    ident = evaluate_daily(iso, steps, returns, SRS, Calibration.identity(),
                           home=Pose(long=123.4, vert=-7.7), load_kg=75.0)
    assert ident.checks == plain.checks and ident.accuracy == plain.accuracy
    assert ident.iso_offset_residual_mm == plain.iso_offset_mm


def test_calibrated_evaluation_input_is_checked() -> None:
    one = ([QaMeasurement(Pose(lat=1), Pose(lat=1))], [QaMeasurement(Pose(), Pose())])
    with pytest.raises(ValueError, match="calibration must be a Calibration"):
        evaluate_daily((0, 0, 0), *one, CONV, {"imaging_iso_offset_mm": [0, 0, 1]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="load_kg -1 kg must not be negative"):
        evaluate_daily((0, 0, 0), *one, CONV, load_kg=-1.0)
