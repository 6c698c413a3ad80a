"""Position plausibility during a move (issue 11, item 5): a reported pose the couch
cannot have reached for the commanded motion is named, with value, limit and unit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.plausibility import (
    UPTIME_MODULUS_MS,
    PlausibilityLimits,
    PoseReport,
    elapsed_s,
    implausible_reasons,
)
from safety.pose import AXES, ROTATION_AXES, Pose

SPEEDS = {"lat": 20.0, "long": 20.0, "vert": 20.0, "yaw": 2.0, "pitch": 1.0, "roll": 1.0}
LIMITS = PlausibilityLimits(SPEEDS, margin_mm=1.0, margin_deg=0.2, path_tolerance_mm=1.0,
                            path_tolerance_deg=0.2, max_transport_delay_s=0.5)
START = Pose()
TARGET = Pose(lat=30.0, long=-10.0, yaw=1.0)


def rep(pose: Pose, ms: int, host: float | None = None) -> PoseReport:
    return PoseReport(pose, ms, ms / 1000.0 if host is None else host)


def check(prev: PoseReport | None, now: PoseReport) -> list[str]:
    return implausible_reasons(START, TARGET, prev, now, LIMITS)


# ------------------------------------------------------------------ speed rule

def test_a_pose_on_the_path_at_a_possible_speed_is_plausible() -> None:
    assert check(rep(Pose(lat=10.0, long=-3.0), 1000), rep(Pose(lat=10.4, long=-3.4), 1020)) == []


def test_a_50_mm_jump_between_two_statuses_is_implausible() -> None:
    """The reproduced defect: one valid STATUS 50 mm off mid-move (here still inside the
    path interval of a long move, so only the speed rule can see it)."""
    target = Pose(lat=100.0)
    reasons = implausible_reasons(START, target, rep(Pose(lat=10.0), 1000),
                                  rep(Pose(lat=60.0), 1020), LIMITS)
    assert reasons == [
        ("lat changed 50.00 mm in 0.020 s: more than the maximum speed 20 mm/s allows "
        "(1.40 mm including a margin of 1 mm)")]


@pytest.mark.parametrize("axis", AXES)
def test_each_axis_is_held_to_its_own_speed(axis: str) -> None:
    speed = SPEEDS[axis]
    margin = 0.2 if axis in ROTATION_AXES else 1.0
    path_end = Pose(**{axis: 100.0})
    ok = Pose(**{axis: speed * 0.1 + margin * 0.9})
    too_far = Pose(**{axis: speed * 0.1 + margin * 1.1})
    prev = rep(Pose(), 0)
    assert implausible_reasons(START, path_end, prev, rep(ok, 100), LIMITS) == []
    reasons = implausible_reasons(START, path_end, prev, rep(too_far, 100), LIMITS)
    assert len(reasons) == 1 and reasons[0].startswith(f"{axis} changed")


def test_an_axis_without_a_known_speed_may_not_move_at_all() -> None:
    limits = PlausibilityLimits({"lat": 20.0}, 1.0, 0.2, 1.0, 0.2, 0.5)
    reasons = implausible_reasons(START, Pose(long=10.0), rep(Pose(), 0),
                                  rep(Pose(long=0.1), 1000), limits)
    assert reasons and reasons[0].startswith("long changed")


def test_no_previous_report_leaves_only_the_path_rule() -> None:
    assert check(None, rep(Pose(lat=29.0, long=-9.0, yaw=0.9), 5)) == []


def test_a_late_reply_arriving_out_of_order_is_judged_on_the_controllers_clock() -> None:
    # Made 300 ms before the previous report, received just after it.
    prev = PoseReport(Pose(lat=12.0), 2000, 10.000)
    late = PoseReport(Pose(lat=6.0), 1700, 10.001)
    assert check(prev, late) == []


def test_a_racing_controller_clock_cannot_widen_the_check_beyond_the_links_delay() -> None:
    # The controller claims 100 s passed; the host saw 20 ms: at most 20 ms + 0.5 s count.
    prev = PoseReport(Pose(lat=1.0), 1000, 5.00)
    now = PoseReport(Pose(lat=29.0), 101_000, 5.02)
    assert elapsed_s(prev, now, 0.5) == pytest.approx(0.52)
    assert check(prev, now)


def test_the_controller_uptime_wraps_around() -> None:
    prev = PoseReport(Pose(), UPTIME_MODULUS_MS - 10, 1.0)
    now = PoseReport(Pose(), 10, 1.02)
    assert elapsed_s(prev, now, 0.5) == pytest.approx(0.02)


# ------------------------------------------------------------------- path rule

def test_a_pose_moving_away_from_both_start_and_target_is_implausible() -> None:
    reasons = check(None, rep(Pose(lat=-2.0), 5))
    assert reasons == [
        ("lat -2.00 mm is 2.00 mm outside the commanded path 0.00 -> 30.00 mm (tolerance 1 mm): "
        "moving away from both start and target")]


def test_an_axis_not_commanded_to_move_may_not_drift() -> None:
    reasons = check(None, rep(Pose(vert=1.5), 5))
    assert len(reasons) == 1 and reasons[0].startswith("vert 1.50 mm is 1.50 mm outside")


def test_an_overshoot_within_the_path_tolerance_is_left_to_the_arrival_check() -> None:
    assert check(None, rep(Pose(lat=30.8, long=-10.0, yaw=1.0), 5)) == []


def test_a_rotation_away_from_its_path_is_named_in_degrees() -> None:
    reasons = check(None, rep(Pose(lat=5.0, long=-2.0, yaw=1.3), 5))
    assert reasons == [
        ("yaw 1.30 deg is 0.30 deg outside the commanded path 0.00 -> 1.00 deg (tolerance "
        "0.2 deg): moving away from both start and target")]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_reported_pose_is_implausible(bad: float) -> None:
    assert check(rep(Pose(), 0), rep(Pose(pitch=bad), 20)) == [
        "reported pitch not a finite number"]


@given(st.floats(0.0, 1.0), st.integers(5, 200))
def test_every_pose_of_a_straight_move_at_full_speed_is_plausible(frac: float, dt_ms: int) -> None:
    """The couch moving as commanded never trips the check (no false stops)."""
    # Axis speeds scale the step so that no axis exceeds its speed over dt.
    t = min(1.0, frac)
    step = min(SPEEDS[a] * dt_ms / 1000.0 / abs(TARGET.get(a)) for a in ("lat", "long", "yaw"))
    t2 = min(1.0, t + step)
    p1 = Pose(*(v * t for v in TARGET.as_tuple()))
    p2 = Pose(*(v * t2 for v in TARGET.as_tuple()))
    assert check(rep(p1, 1000), rep(p2, 1000 + dt_ms)) == []


@given(st.sampled_from(AXES), st.floats(3.0, 500.0), st.booleans())
def test_every_jump_well_beyond_speed_and_margin_is_caught(axis: str, jump: float,
                                                          up: bool) -> None:
    delta = jump if up else -jump
    prev = Pose(lat=15.0, long=-5.0, yaw=0.5)
    now = Pose(**{**prev.as_dict(), axis: prev.get(axis) + delta})
    assert check(rep(prev, 1000), rep(now, 1020))
