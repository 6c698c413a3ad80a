"""A console vendor's tests against a simulated igrt room (see README.md).

They use nothing but the `igrt_room` fixture and its documented API
(docs/integration-testing.md): igrtd through its local socket as a room user,
the simulated devices through the control API.
"""

from __future__ import annotations

import time

import pytest

from sim.testing import IgrtdRefused

# Every test here gets a room made from room.json (next to this file): no MQTT
# broker and no kV imager, which these tests do not need.
pytestmark = pytest.mark.igrt_room("room.json")

ISO = [8.0, -12.0, 20.0]
SESSION = {"patient_id": "P1", "plan_uid": "PLAN1", "frame_of_reference_uid": "FOR1",
           "iso": ISO, "patient_position": "HFS", "manual_override": "typed for the test room"}


def shift_mm(lat: float, long: float = 0.0, vert: float = 0.0) -> list[list[float]]:
    """A registration that is a pure translation (4x4, mm), as a vendor's registration
    would export it."""
    return [[1.0, 0.0, 0.0, lat], [0.0, 1.0, 0.0, long], [0.0, 0.0, 1.0, vert],
            [0.0, 0.0, 0.0, 1.0]]


def propose(room, matrix: list[list[float]]) -> str:
    alice = room.igrtd("alice")
    alice.call("open_session", **SESSION)
    proposal = alice.call("propose", matrix=matrix, iso=ISO, patient_position="HFS",
                          binding={"patient_id": "P1", "plan_uid": "PLAN1",
                                   "frame_of_reference_uid": "FOR1",
                                   "imaging_session_uid": "IMG1", "acquired_at": time.time()})
    return str(proposal["id"])


def test_open_a_session_and_read_the_status(igrt_room):
    alice = igrt_room.igrtd("alice")
    assert alice.status()["room"] == "vendor-lab"
    alice.call("open_session", **SESSION)
    status = igrt_room.wait_for_state("READY")
    assert status["interlocks"]["open"] == []
    assert status["couch"]["link_ok"]


def test_a_door_opening_during_a_move_stops_the_couch_and_faults_igrtd(igrt_room):
    proposal_id = propose(igrt_room, shift_mm(25.0, 10.0))
    igrt_room.igrtd("alice").call("confirm", proposal_id=proposal_id)
    igrt_room.igrtd("bob").call("approve", proposal_id=proposal_id)  # 27 mm: two people
    alice = igrt_room.igrtd("alice")
    igrt_room.sim.pendant(True)  # the therapist's hand on the motion-enable pendant
    # igrtd reads the PLC by polling: a hold sent before it sees the pendant is refused.
    igrt_room.wait_for(lambda: alice.status()["interlocks"]["motion_enable_pressed"], 5,
                       "igrtd seeing the pendant pressed")
    with alice.holding(proposal_id) as hold:
        # Wait for motion, or for igrtd to say there will be none (a refused hold, or a
        # move that ended without moving): then the failure shows igrtd's answer.
        igrt_room.wait_for(lambda: igrt_room.sim.truth()["couch"]["moving"] or hold.refused
                           or hold.over, 10, "couch moving")
        assert hold.refused is None and not hold.over, (
            f"the couch did not move: hold refused {hold.refused}; igrtd's last hold "
            f"answer {hold.last}")
        since = igrt_room.sim.record("couch")["now_monotonic"]
        igrt_room.sim.inject("interlock_open", name="door_closed")
        igrt_room.wait_for_state("FAULT", timeout=5)
    stops = [c for c in igrt_room.sim.record("couch", since=since)["commands"]
             if c["kind"] == "STOP"]
    assert stops, "the couch controller never received STOP"
    igrt_room.wait_for(lambda: not igrt_room.sim.truth()["couch"]["moving"], 5, "couch halted")


def test_a_second_approval_by_the_same_person_is_refused(igrt_room):
    proposal_id = propose(igrt_room, shift_mm(12.0))
    bob = igrt_room.igrtd("bob")
    bob.call("confirm", proposal_id=proposal_id)
    with pytest.raises(IgrtdRefused) as refused:
        bob.call("approve", proposal_id=proposal_id)
    assert "another person" in refused.value.error
    assert igrt_room.igrtd("alice").status()["state"] == "AWAITING_APPROVAL"


def test_a_plc_fault_code_shows_as_an_open_interlock(igrt_room):
    viewer = igrt_room.igrtd("vic")  # a viewer may read the status
    igrt_room.sim.inject("plc_fault_code", code=7)
    open_ = igrt_room.wait_for(lambda: viewer.status()["interlocks"]["open"], 5,
                               "an open interlock")
    assert any("fault code 7" in item for item in open_), open_
    igrt_room.sim.clear()
    igrt_room.wait_for(lambda: viewer.status()["interlocks"]["open"] == [], 5,
                       "the interlocks closed again")
