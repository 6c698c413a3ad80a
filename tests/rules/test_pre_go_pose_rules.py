"""Before GO the MotionGate judges the couch as the controller armed: the pose and
moving axes its TARGET_ECHO carries, sampled when the TARGET arrived
(docs/protocols/couch-serial.md), not a status from before the TARGET."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import fake_room

from daemon.api import CommandError
from safety.pose import Pose

from .helpers import ALICE, SMALL, propose


async def test_a_couch_the_echo_places_away_from_its_imaging_pose_gets_no_go(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    # Pushed by hand after the last status igrtd holds: only the echo tells of it.
    room.couch.pose = Pose(0.0, 0.0, -4.0)
    with pytest.raises(CommandError, match=r"couch moved since imaging: vert -4\.00 mm"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("TARGET") == 1
    assert room.journal.count("GO") == 0


async def test_a_couch_the_echo_reports_moving_gets_no_go(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.couch.state = "MOVING"  # when the TARGET arrived; the last status said IDLE
    with pytest.raises(CommandError, match="move not started"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("GO") == 0


async def test_a_status_received_after_the_echo_is_judged_instead_of_it(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.couch.pose = Pose(0.0, 0.0, -4.0)  # the echo places the couch away...
    real_start = room.couch.start_target

    def echo_then_status(pose: Pose, validity_ms: int):  # type: ignore[no-untyped-def]
        fut = real_start(pose, validity_ms)
        room.couch.pose = Pose()  # ...a status read after it has it back at imaging
        room.couch._make_status()
        return fut

    room.couch.start_target = echo_then_status  # type: ignore[method-assign]
    progress = await room.service.hold(ALICE, pid)
    assert progress["state"] == "MOVING"
    assert room.journal.count("GO") == 1
