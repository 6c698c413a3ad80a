"""Travel rules (issue 11, item 2): the verdict follows what the couch will really
travel, and a couch that is no longer where it was imaged is refused."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.motion import MotionRequest, authorize_motion
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, Pose
from safety.travel import (
    CORRECTION,
    SEVERITY,
    TRAVEL,
    couch_moved_reasons,
    evaluate_with_travel,
    stricter,
)

POLICY = VerdictPolicy()
MODEL = CouchModel.default()
NO_RESIDUAL = {"x": 0.0, "y": 0.0, "z": 0.0}
W, C, A, R = (Verdict.WITHIN_TOLERANCE, Verdict.NEEDS_CONFIRMATION,
              Verdict.NEEDS_SECOND_APPROVAL, Verdict.REFUSED)


def _shift_matrix(lat_mm: float) -> list[list[float]]:
    """A registration whose correction (HFS, no rotation) is lat +lat_mm."""
    # HFS: IEC X = DICOM x. The anatomy found at +x means the couch must move -x;
    # the sign does not matter here, only the size.
    m = np.eye(4)
    m[0, 3] = lat_mm
    return m.tolist()


# --------------------------------------------------------------- stricter tier

@pytest.mark.parametrize("a", list(Verdict))
@pytest.mark.parametrize("b", list(Verdict))
def test_the_stricter_of_two_verdicts_wins(a: Verdict, b: Verdict) -> None:
    assert SEVERITY[stricter(a, b)] == max(SEVERITY[a], SEVERITY[b])


def test_a_small_correction_with_a_large_travel_is_refused() -> None:
    """The reproduced defect: +2 mm from a claimed imaging pose, 152 mm from where the
    couch really is."""
    verdict, reasons = evaluate_with_travel(POLICY, Pose(lat=2.0), Pose(lat=152.0),
                                            NO_RESIDUAL, [])
    assert verdict is R
    assert reasons[0].startswith(TRAVEL) and "152.00 mm" in reasons[0] and "30.00 mm" in reasons[0]
    assert any(r.startswith(CORRECTION) for r in reasons), "the reasons name both"


def test_a_travel_needing_a_second_approval_needs_it_whatever_the_correction() -> None:
    verdict, reasons = evaluate_with_travel(POLICY, Pose(lat=2.0), Pose(lat=8.0), NO_RESIDUAL, [])
    assert verdict is A
    assert reasons[0].startswith(f"{TRAVEL}: second approval needed")


def test_a_travel_smaller_than_the_correction_does_not_lower_the_verdict() -> None:
    verdict, _ = evaluate_with_travel(POLICY, Pose(lat=8.0), Pose(lat=0.2), NO_RESIDUAL, [])
    assert verdict is A


def test_within_tolerance_only_when_both_correction_and_travel_are() -> None:
    assert evaluate_with_travel(POLICY, Pose(lat=0.5), Pose(lat=0.6), NO_RESIDUAL, [])[0] is W
    assert evaluate_with_travel(POLICY, Pose(lat=0.5), Pose(lat=3.0), NO_RESIDUAL, [])[0] is C


def test_a_large_travel_rotation_is_refused() -> None:
    verdict, reasons = evaluate_with_travel(POLICY, Pose(yaw=1.0), Pose(yaw=9.0), NO_RESIDUAL, [])
    assert verdict is R
    assert any("yaw rotation 9.00 deg exceeds refusal limit 5.00 deg" in r for r in reasons)


def test_extra_refusals_refuse_whatever_the_tiers_and_come_first() -> None:
    verdict, reasons = evaluate_with_travel(POLICY, Pose(lat=2.0), Pose(lat=2.0), NO_RESIDUAL, [],
                                            ["couch moved since imaging: lat ..."])
    assert verdict is R and reasons[0] == "couch moved since imaging: lat ..."


def test_a_non_finite_travel_is_refused() -> None:
    assert evaluate_with_travel(POLICY, Pose(lat=2.0), Pose(lat=math.nan), NO_RESIDUAL, [])[0] is R


@given(st.floats(-40, 40), st.floats(-40, 40))
def test_the_combined_verdict_is_never_laxer_than_either_alone(d: float, t: float) -> None:
    combined, _ = evaluate_with_travel(POLICY, Pose(lat=d), Pose(lat=t), NO_RESIDUAL, [])
    alone_d = POLICY.evaluate(Pose(lat=d), NO_RESIDUAL, [])[0]
    alone_t = POLICY.evaluate(Pose(lat=t), NO_RESIDUAL, [])[0]
    assert SEVERITY[combined] == max(SEVERITY[alone_d], SEVERITY[alone_t])


# --------------------------------------------------------- plan_correction

def test_plan_with_the_current_pose_uses_the_travel_from_it() -> None:
    p_img = Pose(lat=150.0)
    plan = plan_correction(_shift_matrix(2.0), (0.0, 0.0, 0.0), "HFS", p_img, MODEL, POLICY,
                           current=Pose())
    assert abs(abs(plan.delta.lat) - 2.0) < 1e-6
    assert plan.travel is not None and abs(abs(plan.travel.lat) - 150.0) < 2.5
    assert plan.verdict is R


def test_plan_without_a_current_pose_keeps_the_contract_verdict() -> None:
    plan = plan_correction(_shift_matrix(2.0), (0.0, 0.0, 0.0), "HFS", Pose(lat=150.0), MODEL,
                           POLICY)
    assert plan.verdict is C and plan.travel is None


def test_plan_refuses_a_non_finite_current_pose() -> None:
    with pytest.raises(ValueError, match="current couch pose: lat is not a finite number"):
        plan_correction(_shift_matrix(2.0), (0.0, 0.0, 0.0), "HFS", Pose(), MODEL, POLICY,
                        current=Pose(lat=math.inf))


# ------------------------------------------------------ couch moved since imaging

def test_a_couch_where_it_was_imaged_has_not_moved() -> None:
    assert couch_moved_reasons(Pose(lat=10.0), Pose(lat=10.4, yaw=0.1), 0.5, 0.2) == []


@pytest.mark.parametrize("axis", AXES)
def test_each_axis_beyond_its_tolerance_is_named_with_value_limit_and_unit(axis: str) -> None:
    rotation = axis in ("yaw", "pitch", "roll")
    moved = Pose(**{axis: 0.3 if rotation else 0.6})
    reasons = couch_moved_reasons(Pose(), moved, 0.5, 0.2)
    unit = "deg" if rotation else "mm"
    assert len(reasons) == 1
    assert reasons[0].startswith(f"couch moved since imaging: {axis} +")
    assert f"limit {0.2 if rotation else 0.5:.2f} {unit}" in reasons[0]


def test_the_reproduced_defect_is_named() -> None:
    reasons = couch_moved_reasons(Pose(lat=150.0), Pose(), 0.5, 0.2)
    assert reasons == [("couch moved since imaging: lat -150.00 mm (at imaging 150.00 mm, now "
                       "0.00 mm), limit 0.50 mm")]


def test_an_unknown_current_pose_counts_as_moved() -> None:
    assert couch_moved_reasons(Pose(), None, 0.5, 0.2) == [
        "couch moved since imaging: current couch pose unknown"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_pose_counts_as_moved(bad: float) -> None:
    assert couch_moved_reasons(Pose(), Pose(vert=bad), 0.5, 0.2)
    assert couch_moved_reasons(Pose(vert=bad), Pose(), 0.5, 0.2)


def test_an_interrupted_move_may_be_resumed_from_part_of_the_way() -> None:
    assert couch_moved_reasons(Pose(), Pose(lat=4.0), 0.5, 0.2, toward=Pose(lat=10.0)) == []


def test_an_interrupted_move_is_refused_beyond_its_target_or_off_its_path() -> None:
    assert couch_moved_reasons(Pose(), Pose(lat=11.0), 0.5, 0.2, toward=Pose(lat=10.0))
    assert couch_moved_reasons(Pose(), Pose(lat=-1.0), 0.5, 0.2, toward=Pose(lat=10.0))
    assert couch_moved_reasons(Pose(), Pose(lat=4.0, long=1.0), 0.5, 0.2, toward=Pose(lat=10.0))


# ------------------------------------------------- the motion rule (gate) too

MOVE = MotionRequest(
    kind="couch_move", room_state="CONFIRMED", target=Pose(lat=2.0), current=Pose(),
    confirmation_id="c-1", confirmed_at=100.0, deadline=102.0, now=101.0,
    open_interlocks=[], couch_moving=False, imager_arms_parked=True, imager_moving=False,
    hold_to_run_fresh=True, model=MODEL, couch_at_imaging=Pose(), couch_state="IDLE",
)


def test_the_motion_rule_allows_a_couch_still_where_it_was_imaged() -> None:
    assert authorize_motion(MOVE).allowed


def test_the_motion_rule_refuses_a_couch_moved_since_imaging() -> None:
    d = authorize_motion(replace(MOVE, current=Pose(long=3.0)))
    assert d.reasons == [("couch moved since imaging: long +3.00 mm (at imaging 0.00 mm, now "
                         "3.00 mm), limit 0.50 mm")]


def test_the_motion_rule_uses_the_configured_tolerance() -> None:
    assert authorize_motion(replace(MOVE, current=Pose(long=0.8),
                                    imaging_tolerance_mm=1.0)).allowed
    assert not authorize_motion(replace(MOVE, current=Pose(yaw=0.3))).allowed


def test_the_motion_rule_resumes_an_interrupted_move_only_on_its_path() -> None:
    part_way = replace(MOVE, current=Pose(lat=1.0), imaging_path_end=Pose(lat=2.0))
    assert authorize_motion(part_way).allowed
    assert not authorize_motion(replace(part_way, current=Pose(lat=-3.0))).allowed
    assert not authorize_motion(replace(MOVE, current=Pose(lat=1.0))).allowed
