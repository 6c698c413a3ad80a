"""authorize_motion: every rule alone refuses, and only a fully safe request moves."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from safety.couch_model import CouchModel
from safety.motion import DEFAULT_MOTION_STATES, MotionRequest, authorize_motion
from safety.pose import Pose

MODEL = CouchModel.default()

MOVE = MotionRequest(
    kind="couch_move",
    room_state="CONFIRMED",
    target=Pose(1, 2, 3, 0.5, 0.5, 0.5),
    current=Pose(),
    confirmation_id="c-1",
    confirmed_at=100.0,
    already_executed=False,
    deadline=102.0,
    now=101.0,
    open_interlocks=[],
    couch_moving=False,
    imager_arms_parked=True,
    imager_moving=False,
    hold_to_run_fresh=True,
    model=MODEL,
    couch_state="IDLE",
)
JOG = replace(MOVE, kind="couch_jog", room_state="SERVICE", target=None, confirmation_id=None,
              confirmed_at=None, deadline=None)
ARM = replace(MOVE, kind="imager_arm", room_state="READY", target=None, current=None,
              confirmation_id=None, confirmed_at=None, deadline=None)


@pytest.mark.parametrize("req", [MOVE, JOG, ARM], ids=["couch_move", "couch_jog", "imager_arm"])
def test_a_fully_safe_request_is_allowed(req: MotionRequest) -> None:
    decision = authorize_motion(req)
    assert decision.allowed and decision.reasons == []


def test_couch_move_is_also_allowed_once_the_room_is_moving() -> None:
    assert authorize_motion(replace(MOVE, room_state="MOVING")).allowed


@pytest.mark.parametrize("state", ["READY", "PROPOSED", "AWAITING_APPROVAL", "STOPPED", "FAULT",
                                   "VERIFYING", "OFFLINE"])
def test_couch_move_is_refused_outside_the_motion_states(state: str) -> None:
    d = authorize_motion(replace(MOVE, room_state=state))
    assert d.reasons == [
        f"room state {state} does not permit couch_move (permitted: CONFIRMED, MOVING)"
    ]


@pytest.mark.parametrize("state", ["MOVING", "STOPPED", "FAULT", "VERIFYING"])
def test_jog_and_arms_are_refused_while_a_correction_runs_or_after_a_stop(state: str) -> None:
    assert not authorize_motion(replace(JOG, room_state=state)).allowed
    assert not authorize_motion(replace(ARM, room_state=state)).allowed


@pytest.mark.parametrize("state", ["STANDBY", "READY", "DONE", "PROPOSED"])
def test_jog_is_refused_outside_service_mode(state: str) -> None:
    assert not authorize_motion(replace(JOG, room_state=state)).allowed


def test_unknown_motion_kind_is_refused() -> None:
    assert authorize_motion(replace(MOVE, kind="gantry")).reasons == ["unknown motion kind 'gantry'"]


def test_open_interlock_refuses_and_is_named() -> None:
    d = authorize_motion(replace(MOVE, open_interlocks=["door open"]))
    assert d.reasons == ["interlock open: door open"]


def test_target_outside_limits_is_refused_not_clipped() -> None:
    req = replace(MOVE, target=Pose(pitch=3.5))
    d = authorize_motion(req)
    assert d.reasons == ["target pitch 3.50 deg outside limit -3.00..3.00 deg"]
    assert req.target == Pose(pitch=3.5)


def test_target_breaking_a_coupled_limit_is_refused() -> None:
    d = authorize_motion(replace(MOVE, target=Pose(pitch=2.5, roll=-2.5)))
    assert d.reasons == ["target roll -2.50 deg outside limit -2.00..2.00 deg while |pitch| > 2.00 deg"]


def test_non_finite_target_is_refused() -> None:
    d = authorize_motion(replace(MOVE, target=Pose(vert=math.nan)))
    assert not d.allowed and d.reasons[0] == "target vert not a finite number"


def test_couch_move_without_target_is_refused() -> None:
    assert authorize_motion(replace(MOVE, target=None)).reasons == ["no target pose"]


def test_jog_to_a_target_outside_limits_is_refused() -> None:
    d = authorize_motion(replace(JOG, target=Pose(lat=300)))
    assert d.reasons == ["target lat 300.00 mm outside limit -250.00..250.00 mm"]


def test_couch_motion_with_unknown_current_pose_is_refused() -> None:
    assert authorize_motion(replace(MOVE, current=None)).reasons == ["current couch pose unknown"]
    assert not authorize_motion(replace(JOG, current=None)).allowed


def test_stale_command_is_refused_naming_how_late_and_how_old() -> None:
    d = authorize_motion(replace(MOVE, now=102.5))
    assert d.reasons == ["command stale: deadline passed 0.500 s ago (confirmed 2.500 s ago)"]


def test_command_exactly_at_its_deadline_is_still_fresh() -> None:
    assert authorize_motion(replace(MOVE, now=102.0)).allowed


def test_couch_move_without_deadline_is_refused() -> None:
    d = authorize_motion(replace(MOVE, deadline=None))
    assert d.reasons == ["couch_move has no deadline: an undated command never moves"]


def test_nan_deadline_is_refused() -> None:
    assert not authorize_motion(replace(MOVE, deadline=math.nan)).allowed


def test_jog_with_a_passed_deadline_is_refused() -> None:
    assert not authorize_motion(replace(JOG, deadline=100.0)).allowed


def test_couch_move_without_confirmation_is_refused() -> None:
    d = authorize_motion(replace(MOVE, confirmation_id=None))
    assert d.reasons == ["couch_move needs a confirmation and none was given"]


def test_already_executed_confirmation_never_moves_again() -> None:
    d = authorize_motion(replace(MOVE, already_executed=True))
    assert d.reasons == ["confirmation c-1 was already executed: a correction applies once"]


def test_lost_hold_to_run_refuses_every_kind() -> None:
    for req in (MOVE, JOG, ARM):
        d = authorize_motion(replace(req, hold_to_run_fresh=False))
        assert d.reasons == ["hold-to-run enable not held or stale"]


def test_couch_never_moves_while_an_imager_arm_is_out() -> None:
    for req in (MOVE, JOG):
        assert authorize_motion(replace(req, imager_arms_parked=False)).reasons == [
            "imager arms not parked"
        ]


def test_couch_never_moves_while_an_imager_arm_moves() -> None:
    assert authorize_motion(replace(MOVE, imager_moving=True)).reasons == ["imager arm moving"]


def test_a_correction_never_starts_while_a_couch_axis_moves() -> None:
    assert authorize_motion(replace(MOVE, couch_moving=True)).reasons == ["couch moving"]


def test_a_jog_follows_a_jog_while_the_couch_still_moves() -> None:
    assert authorize_motion(replace(JOG, couch_moving=True)).allowed


def test_imager_arm_never_moves_while_the_couch_moves() -> None:
    assert authorize_motion(replace(ARM, couch_moving=True)).reasons == ["couch moving"]


def test_imager_arm_may_move_while_unparked() -> None:
    # Extending or retracting the arms is what changes "parked".
    assert authorize_motion(replace(ARM, imager_arms_parked=False)).allowed


def test_every_failed_rule_is_reported_not_just_the_first() -> None:
    d = authorize_motion(replace(MOVE, room_state="READY", open_interlocks=["door open"],
                                 hold_to_run_fresh=False, imager_arms_parked=False))
    assert len(d.reasons) == 4


def test_site_can_name_its_own_motion_states() -> None:
    states = {**DEFAULT_MOTION_STATES, "couch_move": frozenset({"GO"})}
    assert authorize_motion(replace(MOVE, room_state="GO", permitted_states=states)).allowed
    assert not authorize_motion(replace(MOVE, permitted_states=states)).allowed


@pytest.mark.parametrize("state", ["FAULT", "MOVING", "STOPPING", "unknown(9)"])
def test_a_correction_move_is_refused_unless_the_controller_is_idle_or_armed(state: str) -> None:
    """The controller NAKs TARGET bad_state outside IDLE and ARMED: the gate refuses
    first, on the state of the latest status, so nothing is sent."""
    d = authorize_motion(replace(MOVE, couch_state=state))
    assert d.reasons == [f"couch controller reports {state}: couch_move needs it ARMED or IDLE"]


def test_a_faulted_controller_is_named_with_its_fault_code() -> None:
    d = authorize_motion(replace(MOVE, couch_state="FAULT", couch_fault="heartbeat_lost"))
    assert d.reasons == [
        "couch controller reports FAULT (heartbeat_lost): couch_move needs it ARMED or IDLE"]


def test_an_armed_controller_takes_the_go() -> None:
    assert authorize_motion(replace(MOVE, couch_state="ARMED")).allowed


def test_an_unknown_controller_state_refuses_a_correction_move() -> None:
    d = authorize_motion(replace(MOVE, couch_state=None))
    assert d.reasons == ["couch controller state unknown: couch_move needs it ARMED or IDLE"]


def test_jogs_and_arm_moves_are_not_judged_on_the_controller_state() -> None:
    # A held pendant is a stream of JOGs, each taken while the axis jogs (MOVING).
    assert authorize_motion(replace(JOG, couch_state="MOVING")).allowed
    assert authorize_motion(replace(ARM, couch_state=None)).allowed


def test_decision_is_falsy_when_refused() -> None:
    assert not authorize_motion(replace(MOVE, hold_to_run_fresh=False))


# ---- properties -----------------------------------------------------------

def mostly(value: object, other: object) -> st.SearchStrategy:
    """Safe values most of the time, so that allowed requests are common enough to check."""
    return st.sampled_from([value, value, value, other])


requests = st.builds(
    MotionRequest,
    kind=st.sampled_from(["couch_move", "couch_jog", "imager_arm"]),
    room_state=st.sampled_from(["READY", "CONFIRMED", "MOVING", "STOPPED", "FAULT", "DONE",
                                 "SERVICE"]),
    target=st.none() | st.builds(Pose, *[st.floats(-700, 700) | st.just(math.nan)] * 3,
                                 *[st.floats(-5, 5) | st.just(math.nan)] * 3),
    current=mostly(Pose(), None),
    confirmation_id=mostly("c-9", None),
    confirmed_at=st.none() | st.floats(0, 200),
    already_executed=mostly(False, True),
    deadline=st.none() | st.floats(0, 200) | st.just(math.nan),
    now=st.floats(0, 200),
    open_interlocks=mostly([], ["door open"]),
    couch_moving=mostly(False, True),
    imager_arms_parked=mostly(True, False),
    imager_moving=mostly(False, True),
    hold_to_run_fresh=mostly(True, False),
    model=st.just(MODEL),
    couch_state=st.sampled_from(["IDLE", "IDLE", "ARMED", "MOVING", "STOPPING", "FAULT", None]),
)


@settings(max_examples=300)
@given(requests)
def test_allowed_implies_every_precondition_holds(req: MotionRequest) -> None:
    d = authorize_motion(req)
    event("allowed" if d.allowed else "refused")
    assert d.allowed == (d.reasons == [])
    if not d.allowed:
        return
    assert req.room_state in DEFAULT_MOTION_STATES[req.kind]
    assert req.open_interlocks == []
    assert req.hold_to_run_fresh
    assert not req.already_executed
    assert req.deadline is None or req.now <= req.deadline
    if req.kind == "couch_move":
        assert req.confirmation_id is not None and req.deadline is not None
        assert req.target is not None
        assert req.couch_state in ("IDLE", "ARMED")
    if req.kind in ("couch_move", "couch_jog"):
        assert req.current is not None
        assert req.imager_arms_parked and not req.imager_moving
        if req.target is not None:
            assert MODEL.check_pose(req.target) == []
            assert all(math.isfinite(v) for v in req.target)
    else:
        assert not req.couch_moving


@given(
    fault=st.sampled_from([
        {"open_interlocks": ["door open"]},
        {"hold_to_run_fresh": False},
        {"already_executed": True},
        {"now": 102.001},
        {"imager_arms_parked": False},
        {"imager_moving": True},
        {"room_state": "STOPPED"},
        {"target": Pose(yaw=96)},
        {"couch_state": "FAULT"},
        {"couch_state": "STOPPING"},
    ]),
    target=st.builds(Pose, st.floats(-250, 250), st.floats(-600, 600), st.floats(-400, 200),
                     st.floats(-95, 95), st.floats(-2, 2), st.floats(-2, 2)),
)
def test_any_single_fault_refuses_an_otherwise_safe_move(fault, target) -> None:
    assert authorize_motion(replace(MOVE, target=target)).allowed
    assert not authorize_motion(replace(MOVE, **{"target": target, **fault})).allowed


def test_between_beams_the_couch_moves_with_the_beam_held_by_the_plc() -> None:
    assert authorize_motion(replace(MOVE, beam_hold_required=True, beam_held=True)).allowed


@pytest.mark.parametrize(("held", "read"), [(False, "released"), (None, "not reported")])
def test_between_beams_a_beam_not_confirmed_held_refuses_the_move(held: bool | None,
                                                                   read: str) -> None:
    d = authorize_motion(replace(MOVE, beam_hold_required=True, beam_held=held))
    assert not d.allowed
    assert any(f"beam-hold output is {read}" in r for r in d.reasons)


def test_outside_monitoring_the_beam_hold_output_does_not_matter() -> None:
    assert authorize_motion(replace(MOVE, beam_hold_required=False, beam_held=False)).allowed


def test_a_correction_that_no_longer_fits_what_is_seen_is_refused_with_its_reason() -> None:
    d = authorize_motion(replace(MOVE, correction_refusal="the target moved 2.1 mm"))
    assert not d.allowed and "the target moved 2.1 mm" in d.reasons
