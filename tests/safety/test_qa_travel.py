"""The travel part of the daily QA (safety.qa_travel): each translation moved alone a
long way finds the couch's scale per axis and its yaw offset; the travel and
axis_alignment checks; a calibration proposed from them; a calibrated room expects them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safety.geometry import rot_z
from safety.pose import Pose
from safety.qa import DailyQaResult, QaMeasurement, evaluate_daily, qa_pattern
from safety.qa_calibration import Calibration
from safety.qa_calibration_proposal import propose_calibration
from safety.qa_travel import TRAVEL_AXES, TravelMeasurement, fit_axes, travel_pattern

T = 50.0


def couch_motion(cmd: Pose, scale: dict[str, float], yaw_deg: float) -> tuple[float, ...]:
    """What a couch with these scale errors and a table top turned by yaw_deg really does
    for the commanded translation (lat, long, vert), seen in couch axes at yaw 0."""
    d = np.array([cmd.lat * (1 + scale.get("lat", 0.0)), cmd.long * (1 + scale.get("long", 0.0)),
                  cmd.vert * (1 + scale.get("vert", 0.0))])
    return tuple(float(v) for v in rot_z(yaw_deg) @ d)


def daily(scale: dict[str, float] | None = None, yaw_deg: float = 0.0,
          travel_mm: float = T, noise_mm: float = 0.0, calibration: Calibration | None = None,
          seed: int = 0) -> DailyQaResult:
    rng = np.random.default_rng(seed)
    steps, returns, travels = [], [], []
    for i, pose in enumerate(qa_pattern(travel_mm=travel_mm)):
        lat, long, vert = (v + float(rng.normal(0.0, noise_mm)) if noise_mm else v
                           for v in couch_motion(pose, scale or {}, yaw_deg))
        if i >= 24 and pose != Pose():
            axis = next(a for a in TRAVEL_AXES if pose.get(a) != 0.0)
            travels.append(TravelMeasurement(axis, pose.get(axis), (lat, long, vert)))
            continue
        measured = Pose(lat, long, vert, pose.yaw, pose.pitch, pose.roll)
        (steps if pose != Pose() else returns).append(QaMeasurement(pose, measured))
    return evaluate_daily((0.0, 0.0, 0.0), steps, returns, "srs", calibration, travels=travels)


def test_the_travel_part_moves_each_translation_alone_out_back_and_home() -> None:
    assert travel_pattern(50.0) == [Pose(lat=50.0), Pose(lat=-50.0), Pose(),
                                    Pose(long=50.0), Pose(long=-50.0), Pose(),
                                    Pose(vert=50.0), Pose(vert=-50.0), Pose()]


def test_no_travel_part_at_0_mm() -> None:
    assert travel_pattern(0.0) == []
    assert len(qa_pattern()) == 24


@pytest.mark.parametrize("bad", [math.nan, math.inf, -10.0, 150.0])
def test_a_travel_outside_0_to_100_mm_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="travel_mm"):
        travel_pattern(bad)


def test_a_travel_measurement_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="measured_mm"):
        TravelMeasurement("lat", 50.0, (50.0, math.nan, 0.0))
    with pytest.raises(ValueError, match="0 mm"):
        TravelMeasurement("lat", 0.0, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="travel axis"):
        TravelMeasurement("yaw", 1.0, (0.0, 0.0, 0.0))


def test_a_perfect_couch_fits_no_scale_and_no_yaw_offset() -> None:
    r = daily()
    assert r.axis_fit is not None
    assert r.axis_fit.scale == pytest.approx({"lat": 0.0, "long": 0.0, "vert": 0.0}, abs=1e-12)
    assert r.axis_fit.yaw_offset_deg == pytest.approx(0.0, abs=1e-12)
    assert r.passed


def test_a_vertical_scale_error_is_found_from_the_travels() -> None:
    r = daily(scale={"vert": 0.008})
    assert r.axis_fit is not None
    assert r.axis_fit.scale["vert"] == pytest.approx(0.008, abs=1e-9)
    assert r.check("travel", "vert").value == pytest.approx(0.4, abs=1e-9)  # 0.8 % of 50 mm


def test_a_turned_table_top_is_found_as_a_yaw_offset() -> None:
    r = daily(yaw_deg=0.15)
    assert r.axis_fit is not None and r.axis_fit.yaw_offset_deg == pytest.approx(0.15, abs=1e-6)
    c = r.check("axis_alignment", "yaw")
    assert c.passed and c.value == pytest.approx(0.15, abs=1e-6) and c.unit == "deg"
    assert c.limit == 0.5  # SRS rotation limit


def test_a_yaw_offset_beyond_the_rotation_limit_fails_the_daily_qa() -> None:
    r = daily(yaw_deg=0.7)
    assert not r.passed
    assert any("axis alignment yaw: 0.70 deg exceeds limit 0.50 deg" in f for f in r.failures)


def test_with_noise_the_fit_finds_the_injected_errors_within_three_standard_errors() -> None:
    r = daily(scale={"vert": 0.008}, yaw_deg=0.15, noise_mm=0.05, seed=3)
    fit = r.axis_fit
    assert fit is not None and fit.yaw_offset_deg is not None and fit.yaw_offset_se_deg
    assert abs(fit.scale["vert"] - 0.008) < 3 * fit.scale_se["vert"]
    assert abs(fit.yaw_offset_deg - 0.15) < 3 * fit.yaw_offset_se_deg
    assert fit.noise_mm == pytest.approx(0.05, rel=0.5)


def test_without_travels_there_is_no_travel_or_alignment_check() -> None:
    r = daily(travel_mm=0.0, yaw_deg=0.15)
    assert not [c for c in r.checks if c.name in ("travel", "axis_alignment")]
    assert r.axis_fit is not None and r.axis_fit.yaw_offset_deg is not None  # steps only


def test_fit_axes_needs_lat_and_long_for_a_yaw_offset() -> None:
    fit = fit_axes([("vert", 50.0, (0.0, 0.0, 50.4)), ("vert", -50.0, (0.0, 0.0, -50.4))], 0.05)
    assert fit.scale["vert"] == pytest.approx(0.008) and fit.yaw_offset_deg is None


def test_a_stored_result_with_travels_is_rebuilt_to_the_same_verdict_and_fit() -> None:
    r = daily(scale={"vert": 0.008}, yaw_deg=0.15, noise_mm=0.05)
    again = DailyQaResult.from_json(r.to_json())  # stored numbers are rounded to 1e-9
    assert [(c.name, c.axis, c.passed) for c in again.checks] == [
        (c.name, c.axis, c.passed) for c in r.checks]
    a, b = again.axis_fit, r.axis_fit
    assert a is not None and b is not None
    assert a.scale == pytest.approx(b.scale, abs=1e-6)
    assert a.yaw_offset_deg == pytest.approx(b.yaw_offset_deg, abs=1e-6)


def test_a_calibration_is_proposed_with_the_measured_scale_and_yaw_offset() -> None:
    cal = propose_calibration(daily(scale={"vert": 0.008}, yaw_deg=0.15, noise_mm=0.02, seed=1))
    assert cal.scale("vert") == pytest.approx(0.008, abs=0.0005)
    assert cal.offset("yaw") == pytest.approx(0.15, abs=0.02)
    assert cal.scale("lat") == 0.0 and cal.scale("long") == 0.0


def test_under_its_calibration_the_room_expects_the_scale_and_the_turn() -> None:
    cal = Calibration(axis_scale={"vert": 0.008}, axis_offset={"yaw": 0.15}, version=1)
    r = daily(scale={"vert": 0.008}, yaw_deg=0.15, calibration=cal)
    assert r.check("axis_alignment", "yaw").value == pytest.approx(0.0, abs=1e-6)
    for axis in TRAVEL_AXES:
        assert r.check("travel", axis).value == pytest.approx(0.0, abs=1e-6)
