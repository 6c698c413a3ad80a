"""Motion supervision rules (hold-to-run, interlocks, trips, runaway) on in-memory fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import fake_room

from daemon.api import CommandError
from daemon.proposals import ProposalStatus

from .helpers import ALICE, LARGE, SMALL, propose, start_move, supervised, until


async def test_a_move_stops_when_hold_to_run_heartbeats_stop(tmp_path: Path) -> None:
    room = await fake_room(tmp_path, hold_timeout_s=0.1)
    async with supervised(room):
        await start_move(room)
        await until(lambda: str(room.service.workflow.state) == "STOPPED")
    assert room.journal.count("STOP") >= 1
    assert room.service.current is not None
    assert room.service.current.status is ProposalStatus.INTERRUPTED


async def test_an_interlock_opening_during_a_move_latches_fault_at_once(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    await start_move(room)
    room.plc.change(open_=["door"])  # the PLC listener runs synchronously
    assert str(room.service.workflow.state) == "FAULT"
    assert room.service.active is None


async def test_a_trip_writes_stop_before_it_audits_or_changes_state(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    await start_move(room)
    stops_before = room.journal.count("STOP")
    room.plc.change(open_=["collision pads"])
    first_stop = [i for i, (w, _) in enumerate(room.journal.entries) if w == "STOP"][stops_before]
    assert first_stop < room.journal.index("audit:fault")
    assert first_stop < room.journal.index("audit:state", lambda d: d["new"] == "FAULT")


async def test_an_interlock_opening_while_confirmed_spends_the_confirmation(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.plc.change(open_=["door"])
    assert str(room.service.workflow.state) == "STOPPED"
    p = room.service.current
    assert p is not None and p.status is ProposalStatus.PROPOSED and p.confirmation is None


async def test_a_move_without_the_motion_enable_pressed_sends_nothing(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.plc.enable_pressed = False
    with pytest.raises(CommandError, match="move not started"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("TARGET") == room.journal.count("GO") == 0
    assert str(room.service.workflow.state) == "CONFIRMED"  # nothing sent: still confirmed


async def test_couch_motion_with_nothing_commanded_latches_fault(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    room.couch.push()  # seen at rest, nothing commanded since
    room.couch.state = "MOVING"
    room.couch.push()
    assert str(room.service.workflow.state) == "FAULT"
    assert [f["what"] for f in room.audit.events("fault")] == ["uncommanded motion"]
    assert room.journal.count("STOP") >= 2  # at start-up, and for the runaway


async def test_stop_during_a_move_latches_stopped_and_interrupts_the_proposal(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    async with supervised(room):
        await start_move(room)
        await room.service.stop(ALICE, "test")
    assert str(room.service.workflow.state) == "STOPPED"
    assert room.service.current is not None
    assert room.service.current.status is ProposalStatus.INTERRUPTED


async def test_a_proposal_superseded_while_its_go_is_on_its_way_stops_the_couch(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    old = room.service.current
    new_ids: list[str] = []

    async def new_proposal() -> None:
        new_ids.append(await propose(room, LARGE, open_session=False))

    room.couch.while_go_in_flight = new_proposal
    with pytest.raises(CommandError, match="move stopped as it started"):
        await room.service.hold(ALICE, pid)
    assert room.journal.index("GO") < [i for i, (w, _) in enumerate(room.journal.entries)
                                       if w == "STOP"][-1]
    assert old is not None and old.status is ProposalStatus.SUPERSEDED
    assert room.service.active is None and str(room.service.workflow.state) == "PROPOSED"
    assert room.service.current is not None and room.service.current.id == new_ids[0]


async def test_a_confirmed_move_does_not_start_on_a_lost_couch_link(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    room.couch.link_ok = False
    assert "couch link lost" in room.service.room.motion_facts("couch_move").open_interlocks
    with pytest.raises(CommandError, match="interlock open: couch link lost"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("TARGET") == 0


async def test_motion_reported_while_a_go_is_unanswered_in_a_tripped_room_is_stopped_again(
        tmp_path: Path) -> None:
    """The STOP of a trip can be lost on the line (cut right after GO); when the
    line is back and the controller reports MOVING while igrtd still waits for the
    GO's answer, the room allows no motion: STOP again at once, not only when the
    GO times out (found by the fault campaign once the simulated wire took time)."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    restops: list[int] = []

    async def trip_then_report_motion() -> None:
        room.plc.change(open_=["door"])  # trips: STOP written (and, here, lost)
        assert str(room.service.workflow.state) in ("STOPPED", "FAULT")
        stops = room.journal.count("STOP")
        room.couch.state = "MOVING"  # the controller acted on the GO after all
        room.couch.push()
        restops.append(room.journal.count("STOP") - stops)

    room.couch.while_go_in_flight = trip_then_report_motion
    with pytest.raises(CommandError):
        await room.service.hold(ALICE, pid)
    assert restops == [1]


async def test_an_imager_arm_leaving_parked_while_a_go_is_unanswered_stops_the_couch(
        tmp_path: Path) -> None:
    """Before GO the arms are no interlock (they may be out for imaging); once GO is
    written the couch may move, even while its answer is lost on a cut line and the
    room still reads CONFIRMED for up to the 250 ms reply timeout (found by the fault
    campaign: STOP only when the GO timed out, 216 ms after the arm left)."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    seen: list[tuple[str, int]] = []

    async def arm_leaves_parked() -> None:
        stops = room.journal.count("STOP")
        room.plc.arms_parked = False
        room.plc.change()
        seen.append((str(room.service.workflow.state), room.journal.count("STOP") - stops))

    room.couch.while_go_in_flight = arm_leaves_parked
    with pytest.raises(CommandError):
        await room.service.hold(ALICE, pid)
    assert seen == [("FAULT", 1)]


async def test_motion_enable_let_go_while_a_go_is_unanswered_stops_the_couch(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    seen: list[tuple[str, int]] = []

    async def enable_released() -> None:
        stops = room.journal.count("STOP")
        room.plc.change(enable=False)
        seen.append((str(room.service.workflow.state), room.journal.count("STOP") - stops))

    room.couch.while_go_in_flight = enable_released
    with pytest.raises(CommandError):
        await room.service.hold(ALICE, pid)
    assert seen == [("STOPPED", 1)]
