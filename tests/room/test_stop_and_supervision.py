"""Stop always wins; losing hold-to-run stops motion; recovery needs a fresh confirmation."""

from __future__ import annotations

import time

from safety.pose import Pose

from .conftest import Console, executed

LONG_MOVE = Pose(20.0, 15.0, -10.0, 0.0, 0.0, 0.0)  # about 2 s of travel


def _moving(room, alice: Console, bob: Console | None = None) -> tuple[str, object]:
    alice.open_session()
    prop = alice.propose(LONG_MOVE)
    pid = prop["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    if prop["result"]["verdict"] == "needs_second_approval":
        assert bob is not None
        bob.ok("approve", proposal_id=pid)
    holder = alice.hold_in_background(pid)
    alice.wait_state("MOVING")
    deadline = time.monotonic() + 5
    while not room.call(lambda: room.couch.is_moving) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid, holder


def _halted(room, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not room.call(lambda: room.couch.is_moving):
            return True
        time.sleep(0.01)
    return False


def test_stop_during_move_halts_all_axes(room, alice: Console, bob: Console) -> None:
    _, holder = _moving(room, alice, bob)
    alice.ok("stop", reason="test")
    assert _halted(room)
    p1 = room.couch_pose
    time.sleep(0.3)
    assert room.couch_pose.minus(p1).as_tuple() == Pose().as_tuple() or all(
        abs(v) < 0.05 for v in room.couch_pose.minus(p1).as_tuple())
    holder.stop()
    assert alice.ok("status")["state"] == "STOPPED"
    assert executed(room, "STOP")


def test_stop_is_accepted_in_every_state(alice: Console) -> None:
    assert alice.call("stop")["ok"]  # STANDBY
    alice.open_session()
    assert alice.call("stop")["ok"]  # READY


def test_losing_hold_to_run_heartbeats_stops_motion(room, alice: Console, bob: Console) -> None:
    _, holder = _moving(room, alice, bob)
    holder.stop()  # the finger leaves the button: no more heartbeats, no release either
    assert _halted(room, timeout=2.0)
    st = alice.wait_state("STOPPED", "FAULT")
    assert "hold-to-run" in st["reason"]


def test_release_stops_motion(room, alice: Console, bob: Console) -> None:
    _, holder = _moving(room, alice, bob)
    holder.stop()
    alice.ok("release")
    assert _halted(room)


def test_stopped_move_does_not_resume_without_fresh_confirmation(
        room, alice: Console, bob: Console) -> None:
    pid, holder = _moving(room, alice, bob)
    alice.ok("stop")
    holder.stop()
    assert _halted(room)
    gos = len(executed(room, "GO"))
    # Heartbeats alone do nothing in STOPPED; reset leaves the proposal needing confirmation.
    assert alice.call("hold", proposal_id=pid)["result"]["running"] is False
    alice.ok("reset")
    st = alice.ok("status")
    assert st["state"] == "PROPOSED" and st["proposal"]["status"] == "interrupted"
    assert alice.call("hold", proposal_id=pid)["result"]["running"] is False
    time.sleep(0.2)
    assert len(executed(room, "GO")) == gos


def test_fresh_confirmation_after_stop_completes_the_move(room, alice: Console, bob: Console) -> None:
    pid, holder = _moving(room, alice, bob)
    alice.ok("stop")
    holder.stop()
    alice.ok("reset")
    alice.ok("confirm", proposal_id=pid)
    bob.ok("approve", proposal_id=pid)
    holder = alice.hold_in_background(pid)
    st = alice.wait_state("DONE", "FAULT", "STOPPED", timeout=30)
    holder.stop()
    assert st["state"] == "DONE"
    assert len(executed(room, "GO")) == 2


def test_couch_link_silence_faults_the_move(room, alice: Console, bob: Console) -> None:
    _, holder = _moving(room, alice, bob)
    room.call(lambda: room.couch.silence_link(1.0))
    st = alice.wait_state("FAULT", "STOPPED", timeout=5)
    holder.stop()
    assert st["state"] == "FAULT"
    assert _halted(room, timeout=3)
