"""Verdict tiers at and around every default threshold (docs/geometry.md)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.couch_model import CouchModel
from safety.policy import Verdict, VerdictPolicy
from safety.pose import Pose

POLICY = VerdictPolicy()
NO_RESIDUAL = {"x": 0.0, "y": 0.0, "z": 0.0}
W, C, A, R = (Verdict.WITHIN_TOLERANCE, Verdict.NEEDS_CONFIRMATION,
              Verdict.NEEDS_SECOND_APPROVAL, Verdict.REFUSED)


def verdict(delta: Pose, residual=NO_RESIDUAL, violations=(), extra=()) -> Verdict:
    return POLICY.evaluate(delta, residual, list(violations), list(extra))[0]


def test_defaults_are_the_contract_thresholds() -> None:
    assert POLICY.model_dump() == {
        "tolerance_translation_mm": 1.0, "tolerance_rotation_deg": 0.5,
        "second_approval_shift_mm": 5.0, "second_approval_rotation_deg": 2.0,
        "second_approval_residual_rotation_deg": 1.0,
        "refuse_shift_mm": 30.0, "refuse_rotation_deg": 5.0,
    }


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (Pose(), W),
        (Pose(lat=1.0, long=-1.0, vert=1.0), W),  # every translation <= 1 mm
        (Pose(lat=1.001), C),
        (Pose(yaw=0.5, pitch=-0.5, roll=0.5), W),  # every rotation <= 0.5 deg
        (Pose(roll=-0.501), C),
        (Pose(lat=3.0, long=4.0), C),  # vector shift exactly 5 mm
        (Pose(lat=3.0, long=4.001), A),
        (Pose(pitch=2.0), C),
        (Pose(yaw=-2.001), A),
        (Pose(lat=18.0, long=24.0), A),  # vector shift exactly 30 mm
        (Pose(lat=18.0, long=24.001), R),
        (Pose(yaw=5.0), A),
        (Pose(yaw=5.001), R),
        (Pose(roll=-5.001), R),
    ],
)
def test_tier_boundaries(delta: Pose, expected: Verdict) -> None:
    assert verdict(delta) is expected


def test_residual_rotation_at_one_degree_needs_no_second_approval() -> None:
    assert verdict(Pose(), {"x": 1.0, "y": -1.0, "z": 1.0}) is W


def test_residual_rotation_above_one_degree_needs_second_approval_even_without_a_move() -> None:
    assert verdict(Pose(), {"x": 0.0, "y": -1.001, "z": 0.0}) is A


def test_limit_violation_refuses_even_a_tiny_correction() -> None:
    (v,) = CouchModel.default().check_pose(Pose(pitch=3.1))
    got, reasons = POLICY.evaluate(Pose(pitch=0.1), NO_RESIDUAL, [v])
    assert got is R
    assert reasons == ["target pitch 3.10 deg outside limit -3.00..3.00 deg"]


def test_stale_registration_refuses() -> None:
    got, reasons = POLICY.evaluate(Pose(), NO_RESIDUAL, [], ["registration 4000 s old > 1800 s"])
    assert got is R and reasons == ["registration 4000 s old > 1800 s"]


@pytest.mark.parametrize("axis", ["lat", "long", "vert", "yaw", "pitch", "roll"])
def test_non_finite_delta_is_refused(axis: str) -> None:
    assert verdict(Pose(**{axis: math.nan})) is R


def test_non_finite_residual_is_refused() -> None:
    assert verdict(Pose(), {"x": math.nan, "y": 0.0, "z": 0.0}) is R


def test_refusal_reasons_name_value_limit_and_unit() -> None:
    _, reasons = POLICY.evaluate(Pose(lat=40.0, pitch=-6.0), NO_RESIDUAL, [])
    assert reasons == [
        "vector shift 40.00 mm exceeds refusal limit 30.00 mm",
        "pitch rotation 6.00 deg exceeds refusal limit 5.00 deg",
    ]


def test_second_approval_reasons_name_value_limit_and_unit() -> None:
    _, reasons = POLICY.evaluate(Pose(lat=6.0, yaw=2.5), {"x": 0, "y": 1.5, "z": 0}, [])
    assert reasons == [
        "second approval needed: vector shift 6.00 mm exceeds 5.00 mm",
        "second approval needed: yaw rotation 2.50 deg exceeds 2.00 deg",
        "second approval needed: residual rotation y 1.50 deg exceeds 1.00 deg",
    ]


def test_confirmation_reasons_name_what_is_out_of_tolerance() -> None:
    _, reasons = POLICY.evaluate(Pose(vert=-1.5, roll=0.75), NO_RESIDUAL, [])
    assert reasons == [
        "confirmation needed: vert 1.50 mm exceeds tolerance 1.00 mm",
        "confirmation needed: roll 0.75 deg exceeds tolerance 0.50 deg",
    ]


def test_within_tolerance_says_no_move() -> None:
    _, reasons = POLICY.evaluate(Pose(lat=0.2), NO_RESIDUAL, [])
    assert reasons == ["every translation <= 1.00 mm and every rotation <= 0.50 deg: no move"]


def test_remaining_isocentre_error_is_explained() -> None:
    _, reasons = POLICY.evaluate(Pose(), NO_RESIDUAL, [], residual_iso={"x": 0, "y": 3, "z": 4})
    assert reasons[-1].startswith("isocentre error 5.00 mm (x 0.00, y 3.00, z 4.00 mm)")


def test_site_policy_can_tighten_thresholds() -> None:
    srs = VerdictPolicy(tolerance_translation_mm=0.5, second_approval_shift_mm=2.0,
                        refuse_shift_mm=10.0)
    assert srs.evaluate(Pose(lat=0.7), NO_RESIDUAL, [])[0] is C
    assert srs.evaluate(Pose(lat=2.5), NO_RESIDUAL, [])[0] is A
    assert srs.evaluate(Pose(lat=10.5), NO_RESIDUAL, [])[0] is R


def test_policy_with_second_approval_above_refusal_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not exceed refuse_shift_mm"):
        VerdictPolicy(second_approval_shift_mm=40.0)


def test_policy_rejects_unknown_and_negative_settings() -> None:
    with pytest.raises(ValueError):
        VerdictPolicy.model_validate({"tolerance_mm": 1})
    with pytest.raises(ValueError):
        VerdictPolicy(refuse_rotation_deg=-1)


deltas = st.builds(Pose, *[st.floats(-50, 50)] * 6)


@given(deltas)
def test_verdict_never_gets_milder_as_the_correction_grows(delta: Pose) -> None:
    order = [W, C, A, R]
    bigger = Pose(*(2 * v for v in delta.as_tuple()))
    assert order.index(verdict(bigger)) >= order.index(verdict(delta))


@given(deltas)
def test_sign_of_the_correction_does_not_change_the_verdict(delta: Pose) -> None:
    assert verdict(delta) is verdict(Pose(*(-v for v in delta.as_tuple())))
