"""igrtd's collision checks (issue 17; daemon/collision_guard.py) on fakes: at the
proposal the whole path at the gantry angle the PLC reports, at the MotionGate again when
the gantry or the arms changed, and during motion against the hard margin.

Numbers from the shipped room model (docs/collision.md): with the couch 80 mm down
(vert -80) the couch top clears the collimator by 135 mm with the gantry at 90 deg and
by 14.6 mm at 135 deg (below both the 50 mm margin and the 20 mm hard margin).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import fake_room
from pydantic import ValidationError

from daemon.api import CommandError, SessionRequest
from safety.pose import Pose

from .helpers import ALICE, ISO, SMALL, propose, supervised, until

LOW = Pose(vert=-80.0)


async def test_a_proposal_carries_the_clearance_of_its_path(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    view = room.service.room.proposals[pid].view()
    collision = view["collision"]
    assert isinstance(collision, dict) and collision["allowed"] is True
    assert collision["gantry_deg"] == 0.0 and collision["margin_mm"] == 50.0
    assert collision["min_clearance_mm"] > 200.0 and collision["objects"] == ["patient",
                                                                             "collimator"]


async def test_a_path_within_the_margin_is_refused_naming_objects_clearance_and_margin(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    room.couch.pose, room.plc.gantry_deg = LOW, 135.0
    pid = await propose(room, SMALL)
    p = room.service.room.proposals[pid]
    assert str(p.status) == "refused"
    why = [r for r in p.plan.reasons if r.startswith("collision:")]
    assert why and "couch top and collimator: clearance" in why[0], p.plan.reasons
    assert "below the 50 mm margin" in why[0]
    assert room.journal.count("TARGET") == 0


async def test_an_unknown_gantry_angle_refuses_every_couch_move(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    room.plc.gantry_deg = None  # the PLC does not vouch for register 9
    pid = await propose(room, SMALL)
    p = room.service.room.proposals[pid]
    assert str(p.status) == "refused"
    assert any("gantry angle unknown" in r for r in p.plan.reasons), p.plan.reasons


async def test_a_gantry_turned_after_the_proposal_is_checked_again_before_anything_is_sent(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    room.couch.pose, room.plc.gantry_deg = LOW, 90.0
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.plc.gantry_deg = 135.0
    with pytest.raises(CommandError, match="collision: couch top and collimator: clearance"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("TARGET") == 0 and room.journal.count("GO") == 0
    refused = room.audit.events("motion_refused")
    assert refused and "collision:" in str(refused[-1]["reasons"]), refused


async def test_a_gantry_turned_during_the_move_stops_the_couch(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    room.couch.pose, room.plc.gantry_deg = LOW, 90.0
    async with supervised(room):
        pid = await propose(room, SMALL)
        await room.service.confirm(ALICE, pid)
        progress = await room.service.hold(ALICE, pid)
        assert progress["state"] == "MOVING", progress
        room.couch.push()  # moving, clear of the gantry at 90 deg
        assert str(room.service.workflow.state) == "MOVING"
        room.plc.gantry_deg = 135.0  # turned during the move
        room.couch.push()
        await until(lambda: str(room.service.workflow.state) == "STOPPED")
    assert room.journal.count("STOP") >= 1
    trips = [d for e, _, d in room.audit.records if "hard margin" in str(d)]
    assert trips and "couch top and collimator" in str(trips[-1]), room.audit.records[-5:]


async def test_the_sessions_patient_envelope_is_the_one_checked(tmp_path: Path) -> None:
    # Raised 150 mm under a gantry at 0 deg: the default 250 mm body clears the collimator
    # by 150 mm; a 400 mm one (a large patient, or a thick immobilisation) touches it.
    room = await fake_room(tmp_path)
    room.couch.pose = Pose(vert=150.0)
    await room.service.open_session(ALICE, SessionRequest.model_validate({
        "patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F", "iso": ISO,
        "patient_position": "HFS", "manual_override": "typed for the test room",
        "patient_envelope": {"body": {"shape": "box", "width_mm": 500.0, "height_mm": 400.0}}}))
    pid = await propose(room, SMALL, open_session=False)
    p = room.service.room.proposals[pid]
    assert str(p.status) == "refused"
    assert any("patient and collimator" in r for r in p.plan.reasons), p.plan.reasons
    snap = room.service.room.snapshot()
    assert snap["collision"]["objects"] == ["patient", "collimator"]  # type: ignore[index]


def test_a_patient_envelope_with_a_non_finite_size_is_refused() -> None:
    with pytest.raises(ValidationError):
        SessionRequest.model_validate({
            "patient_id": "P", "plan_uid": "PL", "patient_envelope": {
                "body": {"shape": "box", "width_mm": float("nan"), "height_mm": 250.0}}})


async def test_a_path_the_model_fails_to_check_is_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    room = await fake_room(tmp_path)

    def broken(*_args: object) -> None:
        raise RuntimeError("distance query failed")

    monkeypatch.setattr(room.service.room.collision, "plan", broken)
    pid = await propose(room, SMALL)
    p = room.service.room.proposals[pid]
    assert str(p.status) == "refused"
    assert any("the path could not be checked: distance query failed" in r
               for r in p.plan.reasons), p.plan.reasons
