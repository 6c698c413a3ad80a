"""A couch controller FAULT reported while nothing moves latches the room.

The controller faults itself (its heartbeat watchdog when igrtd's loop was held
up past the timeout, a drive fault) and says so in a pushed STATUS. The room
latches FAULT, audited, so that the people see it and their reset clears both;
a held confirmation is spent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import fake_room

from daemon.api import CommandError
from daemon.proposals import ProposalStatus
from drivers.couch import CouchTimeout

from .helpers import ALICE, SMALL, propose, supervised, until


async def _faulted(room, code: str = "heartbeat_lost") -> None:  # type: ignore[no-untyped-def]
    room.couch.state, room.couch.fault_code = "FAULT", code
    room.couch.push()


async def test_a_controller_fault_while_confirmed_latches_fault_and_spends_the_confirmation(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    await _faulted(room)
    assert str(room.service.workflow.state) == "FAULT"
    p = room.service.current
    assert p is not None and p.status is ProposalStatus.PROPOSED and p.confirmation is None
    assert room.journal.count("TARGET") == 0


async def test_a_controller_fault_in_standby_is_audited_with_its_code(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    await _faulted(room, "drive_fault")
    assert str(room.service.workflow.state) == "FAULT"
    audit = room.journal.index("audit:fault", lambda d: d.get("what") == "controller fault")
    assert room.journal.entries[audit][1]["fault_code"] == "drive_fault"


async def test_reset_clears_a_controller_fault_and_the_room_together(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    await propose(room, SMALL)
    await _faulted(room)
    await room.service.reset(ALICE)
    assert room.journal.count("RESET") >= 1
    assert room.couch.state == "IDLE"
    assert str(room.service.workflow.state) in ("READY", "PROPOSED")


async def test_a_controller_found_faulted_when_its_link_comes_back_latches_the_room(
        tmp_path: Path) -> None:
    """The line was silent long enough for the controller's watchdog to fault it;
    igrtd reads the controller as the link comes back and latches FAULT."""
    room = await fake_room(tmp_path)
    async with supervised(room):
        room.couch.link_ok = False
        await until(lambda: str(room.service.workflow.state) == "OFFLINE")
        room.couch.state, room.couch.fault_code = "FAULT", "heartbeat_lost"
        room.couch.link_ok = True
        await until(lambda: str(room.service.workflow.state) == "FAULT")


async def test_a_controller_that_left_a_target_unanswered_is_read_and_its_fault_latched(
        tmp_path: Path) -> None:
    """TARGET went out on a line that then fell silent; the controller's watchdog
    faulted it. igrtd reads the controller after the unanswered command and latches."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)

    def silent(pose: object, validity_ms: int) -> asyncio.Future[object]:
        room.couch.state, room.couch.fault_code = "FAULT", "heartbeat_lost"
        unanswered: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        unanswered.set_exception(
            CouchTimeout("couch controller did not answer TARGET within 250 ms"))
        return unanswered

    room.couch.start_target = silent  # type: ignore[method-assign,assignment]
    with pytest.raises(CommandError, match="did not answer TARGET"):
        await room.service.hold(ALICE, pid)
    await until(lambda: str(room.service.workflow.state) == "FAULT")
