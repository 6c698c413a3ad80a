"""The room workflow over the local control socket, against the simulated couch."""

from __future__ import annotations

import time

from safety.pose import Pose

from .conftest import Console, executed

SMALL = Pose(2.0, 1.5, -1.0, 0.6, 0.0, 0.0)  # needs confirmation only
LARGE = Pose(6.0, 4.0, -3.0, 1.5, 1.0, -0.8)  # vector shift 7.8 mm: second approval


def _confirmed(alice: Console, error: Pose = SMALL) -> str:
    alice.open_session()
    prop = alice.propose(error)
    assert prop["ok"], prop
    pid = prop["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    return pid


def test_confirmed_move_reaches_target_and_is_verified(room, alice: Console) -> None:
    pid = _confirmed(alice)
    holder = alice.hold_in_background(pid)
    st = alice.wait_state("DONE", "FAULT", "STOPPED")
    holder.stop()
    assert st["state"] == "DONE", st
    assert st["last_result"]["outcome"] == "reached"
    pose = room.couch_pose
    for axis, want in SMALL.as_dict().items():
        assert abs(pose.get(axis) - want) < 0.1, (axis, pose)


def test_confirmation_without_hold_to_run_moves_nothing(room, alice: Console) -> None:
    _confirmed(alice)
    time.sleep(0.5)
    assert executed(room, "GO") == []
    assert alice.ok("status")["state"] == "CONFIRMED"


def test_large_correction_needs_second_approval_before_motion(room, alice: Console) -> None:
    alice.open_session()
    pid = alice.propose(LARGE)["result"]["id"]
    assert alice.ok("confirm", proposal_id=pid)["status"] == "awaiting_approval"
    reply = alice.call("hold", proposal_id=pid)
    assert reply["ok"] and reply["result"]["running"] is False
    assert executed(room, "GO") == []


def test_second_approval_by_the_confirming_user_is_refused(alice: Console, bob: Console) -> None:
    alice.open_session()
    pid = alice.propose(LARGE)["result"]["id"]
    bob.ok("confirm", proposal_id=pid)  # a physicist may confirm, but then not approve too
    reply = bob.call("approve", proposal_id=pid)
    assert not reply["ok"] and "another person" in reply["error"]
    assert bob.ok("status")["state"] == "AWAITING_APPROVAL"


def test_therapist_cannot_give_the_second_approval(alice: Console) -> None:
    alice.open_session()
    pid = alice.propose(LARGE)["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    reply = alice.call("approve", proposal_id=pid)
    assert not reply["ok"] and "approver" in reply["error"]


def test_completed_correction_cannot_be_confirmed_again(room, alice: Console) -> None:
    pid = _confirmed(alice)
    holder = alice.hold_in_background(pid)
    alice.wait_state("DONE")
    holder.stop()
    reply = alice.call("confirm", proposal_id=pid)
    assert not reply["ok"]
    assert len(executed(room, "GO")) == 1


def test_mismatched_patient_is_refused_with_reason(room, alice: Console) -> None:
    alice.open_session()
    prop = alice.ok_propose = alice.propose(SMALL, patient_id="SOMEONE-ELSE")
    assert prop["ok"]
    assert prop["result"]["verdict"] == "refused"
    assert any("SOMEONE-ELSE" in r for r in prop["result"]["reasons"])
    assert not alice.call("confirm", proposal_id=prop["result"]["id"])["ok"]


def test_stale_registration_is_refused(alice: Console) -> None:
    alice.open_session()
    prop = alice.propose(SMALL, acquired_at=time.time() - 7200)
    assert prop["result"]["verdict"] == "refused"
    assert any("old" in r for r in prop["result"]["reasons"])


def test_target_outside_limits_is_refused_naming_axis_value_and_limit(alice: Console) -> None:
    alice.open_session()
    prop = alice.propose(Pose(0, 0, 0, 0, 3.5, 0))
    assert prop["result"]["verdict"] == "refused"
    assert any("pitch" in r and "3.50 deg" in r and "3.00" in r for r in prop["result"]["reasons"])


def test_within_tolerance_needs_no_move(room, alice: Console) -> None:
    alice.open_session()
    prop = alice.propose(Pose(0.3, -0.2, 0.1, 0.1, 0.0, 0.0))
    assert prop["result"]["verdict"] == "within_tolerance"
    assert alice.ok("status")["state"] == "DONE"
    assert not alice.call("confirm", proposal_id=prop["result"]["id"])["ok"]


def test_unknown_user_is_refused(daemon) -> None:
    c = Console(daemon.socket_path, "mallory")
    reply = c.call("status")
    assert not reply["ok"] and "unknown user" in reply["error"]


def test_viewer_cannot_stop_or_propose(daemon) -> None:
    c = Console(daemon.socket_path, "vic")
    assert c.call("status")["ok"]
    assert not c.call("stop")["ok"]
    assert not c.call("open_session", patient_id="P", plan_uid="x", frame_of_reference_uid="f",
                      iso=[0, 0, 0], patient_position="HFS",
                      manual_override="typed for the test room")["ok"]


def test_malformed_request_gets_one_line_error_and_changes_nothing(alice: Console) -> None:
    alice.open_session()
    reply = alice.call("propose", matrix="not a matrix")
    assert not reply["ok"] and "\n" not in reply["error"]
    assert alice.ok("status")["state"] == "READY"
