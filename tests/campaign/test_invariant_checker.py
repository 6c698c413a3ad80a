"""The campaign's invariant checker catches what it claims to (synthetic records),
so that "zero violations" from the campaign means something."""

from __future__ import annotations

from typing import Any, NamedTuple

from safety.pose import Pose

from .invariants import Report, Timing, check, families
from .rig import Injection, Observation, ProposalRecord

T = Timing(plc_stale_s=0.1, plc_reconnect_min_s=0.05, hold_timeout_s=0.15,
           couch_heartbeat_timeout_s=0.15)
SAFE = {"door_closed": True, "estop_chain_ok": True, "collision_pads_clear": True,
        "motion_enable_pressed": True, "imager_kv_source_parked": True,
        "imager_detector_parked": True, "imager_kv_source_moving": False,
        "imager_detector_moving": False}
TARGET = {"lat": 3.0, "long": 0.0, "vert": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}


class Ex(NamedTuple):
    t: float
    kind: str
    details: dict[str, Any]


class Sample(NamedTuple):
    t: float
    pose: Pose
    moving: tuple[bool, ...]


def go(t: float) -> Ex:
    return Ex(t, "GO", {"echo_id": 1, "target": TARGET})


def moving(t0: float, t1: float) -> list[Sample]:
    """Motion samples every 5 ms from t0, idle from t1."""
    out, t = [Sample(t0 - 0.5, Pose(), (False,) * 6)], t0 + 0.005
    while t < t1:
        out.append(Sample(t, Pose(lat=1.0), (True,) + (False,) * 5))
        t += 0.005
    out.append(Sample(t1, Pose(**TARGET), (False,) * 6))
    return out


def run(executed: list[Ex], *, changes: list[tuple[float, str, bool]] = (),  # type: ignore[assignment]
        injections: list[Injection] = (), confirms: list[tuple[float, float, int]] | None = None,  # type: ignore[assignment]
        holds: list[float] | None = None, motion: list[Sample] | None = None,
        approvals: list[tuple[float, float, int, str]] = (),  # type: ignore[assignment]
        proposals: list[ProposalRecord] = (),  # type: ignore[assignment]
        observations: list[Observation] = (),  # type: ignore[assignment]
        audit: list[float] = (), initial_pose: Pose | None = None) -> list[str]:  # type: ignore[assignment]
    return check(executed=executed, motion=motion or moving(1.0, 1.2), initial_inputs=SAFE,
                 input_changes=changes, injections=injections,
                 confirms=[(0.5, 0.51, 0)] if confirms is None else confirms,
                 holds_sent=[0.9 + 0.02 * i for i in range(40)] if holds is None else holds,
                 t0=0.0, t_end=5.0, timing=T, approvals=approvals, proposals=proposals,
                 observations=observations, audit_fault_ts=audit, initial_pose=initial_pose,
                 wall_offset=WALL).violations


def test_a_clean_confirmed_move_has_no_violation() -> None:
    assert run([go(1.0)]) == []


def test_go_while_the_door_has_been_open_is_a_violation() -> None:
    v = run([go(1.0)], changes=[(0.9, "door_closed", False)])
    assert len(v) == 1 and "door_closed open" in v[0]


def test_go_racing_an_input_change_within_the_reaction_allowance_is_not() -> None:
    assert run([go(1.0), Ex(1.01, "STOP", {})],
               changes=[(0.995, "door_closed", False)]) == []


def test_go_with_a_frozen_plc_heartbeat_past_the_staleness_limit_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.8, "plc_heartbeat_frozen", True)])
    assert any("heartbeat frozen" in x for x in v)


def test_go_just_after_the_plc_connection_was_dropped_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.96, "plc_drop", 1)])
    assert any("PLC connection dropped" in x for x in v)


def test_a_drop_that_closed_no_connection_opens_nothing() -> None:
    assert run([go(1.0)], injections=[Injection(0.96, "plc_drop", 0)]) == []


def test_go_without_hold_to_run_is_a_violation() -> None:
    v = run([go(1.0)], holds=[0.5])
    assert any("hold-to-run" in x for x in v)


def test_go_after_a_stop_without_a_fresh_confirmation_is_a_violation() -> None:
    v = run([Ex(0.7, "STOP", {}), go(1.0)])
    assert any("without a confirmation" in x for x in v)


def test_two_gos_for_one_confirmation_is_a_violation() -> None:
    motion = moving(1.0, 1.05) + moving(1.3, 1.35)[1:]
    v = run([go(1.0), go(1.3)], motion=motion)
    assert any("without a confirmation" in x for x in v)


def test_a_go_started_by_a_held_confirmation_before_its_reply_is_not_a_violation() -> None:
    # Hold-to-run held as the confirmation lands: the GO precedes the confirm's reply.
    assert run([go(1.0)], confirms=[(0.99, 1.02, 0)]) == []


def test_a_go_before_its_confirmation_was_sent_is_a_violation() -> None:
    v = run([go(1.0)], confirms=[(1.01, 1.02, 0)])
    assert any("without a confirmation" in x for x in v)


def test_any_jog_is_a_violation() -> None:
    v = run([go(1.0), Ex(1.5, "JOG", {})])
    assert any("JOG" in x for x in v)


def test_a_move_not_stopped_within_the_bound_after_an_interlock_opens_is_a_violation() -> None:
    v = run([go(1.0), Ex(1.15, "STOP", {})], changes=[(1.05, "estop_chain_ok", False)])
    assert any("only after 100.0 ms" in x for x in v)


def test_a_move_stopped_promptly_after_an_interlock_opens_is_fine() -> None:
    assert run([go(1.0), Ex(1.06, "STOP", {})], changes=[(1.05, "estop_chain_ok", False)]) == []


def test_a_lost_stop_must_be_repeated_once_the_serial_line_is_back() -> None:
    # Door opens during 60 ms of serial silence: the STOP cannot arrive until the
    # line is back at 1.11 s; a move still running at 1.2 s was never stopped.
    inj = [Injection(1.05, "couch_silence", 0.06)]
    changes = [(1.06, "door_closed", False)]
    assert run([go(1.0), Ex(1.13, "STOP", {})], changes=changes, injections=inj) == []
    v = run([go(1.0)], changes=changes, injections=inj, motion=moving(1.0, 1.3))
    assert any("door_closed open" in x and "arrived" in x for x in v)


def test_a_move_already_at_its_target_counts_as_ended_at_once() -> None:
    motion = [Sample(0.5, Pose(**TARGET), (False,) * 6)]
    assert run([go(1.0)], changes=[(1.5, "door_closed", False)], motion=motion) == []


# ------------------------------------------------------------------ issue 11
WALL = 1_700_000_000.0  # UNIX time at monotonic 0 in these records


def proposal(t: float = 0.4, at: Pose | None = None, age_s: float = 10.0,
             pid: str = "prop-1") -> ProposalRecord:
    pose = at or Pose()
    return ProposalRecord(t, 0, pid, pose, pose, "needs_confirmation", WALL + t - age_s)


def go_to(t: float, **target: float) -> Ex:
    return Ex(t, "GO", {"echo_id": 1, "target": {**Pose().as_dict(), **target}})


def travel(t0: float, t1: float, **target: float) -> list[Sample]:
    """The couch at the origin until t0, moving until t1, then at `target`."""
    out = [Sample(t0 - 0.5, Pose(), (False,) * 6)]
    t = t0 + 0.005
    while t < t1:
        f = (t - t0) / (t1 - t0)
        out.append(Sample(t, Pose(**{a: v * f for a, v in target.items()}), (True,) * 6))
        t += 0.005
    out.append(Sample(t1, Pose(**target), (False,) * 6))
    return out


def test_go_while_the_plc_fault_code_is_set_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.9, "plc_fault_code", 5)])
    assert any("PLC fault code 5" in x and "GO executed" in x for x in v)


def test_a_move_not_stopped_after_the_plc_fault_code_is_set_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(1.05, "plc_fault_code", 5)])
    assert any("PLC fault code 5" in x and "during a move" in x for x in v)


def test_a_cleared_plc_fault_code_opens_nothing_afterwards() -> None:
    inj = [Injection(0.5, "plc_fault_code", 5), Injection(0.6, "plc_fault_code", 0)]
    assert run([go(1.0)], injections=inj) == []


def test_go_while_a_plc_register_is_forced_outside_the_map_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.9, "plc_raw_register", (3, 65535))])
    assert any("register 3 forced to 65535" in x for x in v)


def test_a_move_not_stopped_after_a_register_goes_out_of_range_is_a_violation() -> None:
    inj = [Injection(1.05, "plc_raw_register", (4, 4096)),
           Injection(1.15, "plc_raw_register", (4, None))]
    v = run([go(1.0)], injections=inj)
    assert any("register 4 forced to 4096" in x and "during a move" in x for x in v)


def test_an_interlock_pulse_of_one_plc_scan_during_a_move_must_stop_it() -> None:
    changes = [(1.05, "door_closed", False), (1.06, "door_closed", True)]
    v = run([go(1.0)], changes=changes)
    assert any("door_closed open" in x and "during a move" in x for x in v)


def test_travel_beyond_the_confirmation_tier_without_a_second_approval_is_a_violation() -> None:
    # Defect 2 of issue 11: the couch really at lat 0, a GO to lat 36 on one confirmation.
    v = run([go_to(1.0, lat=36.0)], motion=travel(1.0, 1.3, lat=36.0),
            proposals=[proposal()], initial_pose=Pose())
    assert any("travels 36.0 mm" in x and "without a second approval" in x for x in v)


def test_travel_within_the_second_approval_tier_approved_by_another_person_is_fine() -> None:
    assert run([go_to(1.0, lat=20.0)], motion=travel(1.0, 1.3, lat=20.0),
               proposals=[proposal()], approvals=[(0.6, 0.62, 0, "bob")],
               initial_pose=Pose()) == []


def test_a_held_second_approval_answered_after_its_go_counts() -> None:
    assert run([go_to(1.0, lat=20.0)], motion=travel(1.0, 1.3, lat=20.0),
               proposals=[proposal()], approvals=[(0.99, 1.02, 0, "bob")],
               initial_pose=Pose()) == []


def test_a_second_approval_by_the_confirmer_does_not_count() -> None:
    v = run([go_to(1.0, lat=20.0)], motion=travel(1.0, 1.3, lat=20.0),
            proposals=[proposal()], approvals=[(0.6, 0.62, 0, "alice")], initial_pose=Pose())
    assert any("travels 20.0 mm" in x for x in v)


def test_travel_beyond_the_refusal_limit_is_a_violation_even_when_approved() -> None:
    v = run([go_to(1.0, lat=36.0)], motion=travel(1.0, 1.3, lat=36.0),
            proposals=[proposal()], approvals=[(0.6, 0.62, 0, "bob")], initial_pose=Pose())
    assert any("travels 36.0 mm" in x and "second approval allows 30" in x for x in v)


def test_an_excursion_from_the_pose_at_imaging_beyond_the_tier_is_a_violation() -> None:
    # The GO names a 3 mm target, but the couch goes 40 mm away on the way.
    motion = travel(1.0, 1.3, lat=40.0)
    v = run([go_to(1.0, lat=3.0)], motion=motion, proposals=[proposal()], initial_pose=Pose())
    assert any("went 40.0 mm" in x and "from its pose at imaging" in x for x in v)


def test_a_go_after_the_couch_was_moved_since_imaging_is_a_violation() -> None:
    inj = [Injection(0.7, "set_pose", Pose(long=12.0))]
    motion = [Sample(1.05, Pose(long=12.0), (True,) * 6), Sample(1.1, Pose(lat=3.0), (False,) * 6)]
    v = run([go_to(1.0, lat=3.0)], injections=inj, motion=motion, proposals=[proposal()],
            initial_pose=Pose())
    assert any("not where it was imaged" in x and "long +12.00" in x for x in v)


def test_a_go_resuming_on_the_way_to_its_own_target_is_fine() -> None:
    # Interrupted at lat 1.5 on the way from 0 to 3, confirmed afresh, resumed.
    motion = travel(0.5, 0.6, lat=1.5) + travel(1.0, 1.1, lat=3.0)[1:]
    assert run([Ex(0.45, "GO", {"echo_id": 1, "target": {**Pose().as_dict(), "lat": 3.0}}),
                Ex(0.6, "STOP", {}), go_to(1.0, lat=3.0)],
               motion=motion, proposals=[proposal(t=0.4)],
               confirms=[(0.41, 0.42, 0), (0.8, 0.81, 0)], initial_pose=Pose(),
               holds=[0.43 + 0.02 * i for i in range(40)]) == []


def test_a_go_for_a_registration_older_than_the_limit_is_a_violation() -> None:
    v = run([go_to(1.0, lat=3.0)], motion=travel(1.0, 1.1, lat=3.0),
            proposals=[proposal(age_s=3600.0)], initial_pose=Pose())
    assert any("registration 3601 s old" in x for x in v)


def test_a_go_for_a_proposal_whose_move_arrived_and_was_reported_done_is_a_violation() -> None:
    motion = travel(1.0, 1.1, lat=3.0) + [Sample(2.0 + 0.005, Pose(lat=3.0), (True,) * 6),
                                          Sample(2.01, Pose(lat=3.0), (False,) * 6)]
    v = run([go_to(1.0, lat=3.0), go_to(2.0, lat=3.0)], motion=motion,
            proposals=[proposal()], confirms=[(0.5, 0.51, 0), (1.5, 1.51, 0)],
            observations=[Observation(1.2, 0, "DONE", "reached")], initial_pose=Pose(),
            holds=[0.9 + 0.02 * i for i in range(80)])
    assert any("applies proposal prop-1 again" in x for x in v)


def _runaway_records(*, halt_at: float | None = 1.03, state: str = "FAULT",
                     audit: bool = True, reset: bool = True) -> list[str]:
    inj = [Injection(1.0, "runaway", ("lat", 20.0), 0)]
    executed = [Ex(halt_at, "STOP", {})] if halt_at is not None else []
    if reset:
        executed.append(Ex(1.5, "RESET", {}))
    executed.append(go_to(2.0, lat=3.0))
    motion = [Sample(1.0 + 0.005 * i, Pose(lat=0.1 * i), (True,) * 6) for i in range(1, 7)]
    motion += [Sample(1.04, Pose(lat=0.6), (False,) * 6)]
    motion += travel(2.0, 2.1, lat=3.0)[1:]
    return run(executed, injections=inj, motion=motion,
               proposals=[proposal(t=1.8, at=Pose(lat=0.6))],
               confirms=[(1.8, 1.81, 0)], holds=[1.9 + 0.02 * i for i in range(20)],
               observations=[Observation(1.2, 0, state, "why")],
               audit=[WALL + 1.01] if audit else [], initial_pose=Pose())


def test_a_runaway_stopped_latched_audited_and_reset_is_fine() -> None:
    assert _runaway_records() == []


def test_a_runaway_not_stopped_within_the_bound_is_a_violation() -> None:
    v = _runaway_records(halt_at=1.2)
    assert any("runaway" in x and "no STOP/FAULT within 90 ms" in x for x in v)


def test_a_runaway_that_does_not_latch_fault_is_a_violation() -> None:
    v = _runaway_records(state="READY")
    assert any("runaway" in x and "settled in READY" in x for x in v)


def test_a_runaway_without_a_fault_audit_record_is_a_violation() -> None:
    v = _runaway_records(audit=False)
    assert any("runaway" in x and "no fault audit record" in x for x in v)


def test_a_go_after_a_runaway_without_a_couch_reset_is_a_violation() -> None:
    v = _runaway_records(reset=False)
    assert any("runaway" in x and "without a RESET" in x for x in v)


def test_a_pose_jump_during_a_move_that_is_not_stopped_is_a_violation() -> None:
    inj = [Injection(1.05, "pose_jump", ("lat", 50.0), 0)]
    v = run([go(1.0)], injections=inj, observations=[Observation(1.3, 0, "DONE", "reached")])
    assert any("pose_jump" in x and "no STOP/FAULT" in x for x in v)
    assert any("pose_jump" in x and "settled in DONE" in x for x in v)


def test_the_summary_names_each_violation_family_with_a_scenario_to_replay() -> None:
    rep = Report(violations=[
        ("scenario 7: runaway ('lat', 20.0) at 1.000 s: the room settled in READY (x), "
        "not a latched FAULT"),
        ("scenario 9: PLC fault code 5 at 1.050 s during a move; move ended (arrived) only "
        "after 150.0 ms (bound 50 ms)"),
        ("scenario 11: PLC fault code 17 at 2.050 s during a move; move ended (STOP) only "
        "after 90.0 ms (bound 50 ms)")])
    fams = families(rep, 42)
    assert fams["runaway: no latched FAULT"]["replay"] == "42:7"
    assert fams["no stop in time: PLC fault code"]["n"] == 2
    assert fams["no stop in time: PLC fault code"]["replay"] == "42:9"


def test_a_pose_jump_reported_only_after_a_stop_ended_the_move_is_not_judged() -> None:
    inj = [Injection(1.1, "pose_jump", ("lat", 50.0), 0)]
    v = run([go(1.0), Ex(1.105, "STOP", {})], injections=inj,
            observations=[Observation(1.3, 0, "STOPPED", "door open")])
    assert not any("pose_jump" in x for x in v)
