"""Hold-to-run held before the confirmation lands (issue 13, item 6).

A console may hold hold-to-run for a proposal while it is still PROPOSED (or
AWAITING_APPROVAL): the confirmation (or second approval) then starts the move
at once, as the next heartbeat would have, instead of up to a heartbeat later.
Nothing else about hold-to-run changes: the heartbeat must keep arriving, it is
for one proposal, and a stale one starts nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakes import fake_room

from daemon.api import Actor, CommandError, Role

from .helpers import ALICE, BOB, LARGE, SMALL, propose, supervised, until

CAROL = Actor(user="carol", role=Role.THERAPIST)


async def test_a_confirmation_landing_while_its_hold_is_held_starts_the_move(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    early = await room.service.hold(ALICE, pid)
    assert early["running"] is False and str(room.service.workflow.state) == "PROPOSED"
    reply = await room.service.confirm(ALICE, pid)
    assert reply["move"] == "started"
    assert str(room.service.workflow.state) == "MOVING"
    assert room.journal.count("GO") == 1


async def test_a_confirmation_without_a_hold_held_only_confirms(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    reply = await room.service.confirm(ALICE, pid)
    assert "move" not in reply
    assert str(room.service.workflow.state) == "CONFIRMED"
    assert room.journal.count("TARGET") == 0


async def test_a_hold_older_than_the_hold_timeout_starts_nothing(tmp_path: Path) -> None:
    room = await fake_room(tmp_path, hold_timeout_s=0.1)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, pid)
    await asyncio.sleep(0.15)
    reply = await room.service.confirm(ALICE, pid)
    assert "move" not in reply
    assert str(room.service.workflow.state) == "CONFIRMED"
    assert room.journal.count("TARGET") == 0


async def test_a_hold_released_before_the_confirmation_starts_nothing(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, pid)
    await room.service.release(ALICE)
    reply = await room.service.confirm(ALICE, pid)
    assert "move" not in reply
    assert room.journal.count("TARGET") == 0


async def test_a_hold_for_a_proposal_that_was_superseded_starts_nothing(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    old = await propose(room, SMALL)
    await room.service.hold(ALICE, old)
    new = await propose(room, SMALL, open_session=False)
    reply = await room.service.confirm(ALICE, new)
    assert "move" not in reply
    assert room.journal.count("TARGET") == 0


async def test_a_hold_naming_an_unknown_proposal_is_not_recorded(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, "prop-that-does-not-exist")
    reply = await room.service.confirm(ALICE, pid)
    assert "move" not in reply
    assert room.journal.count("TARGET") == 0


async def test_a_second_approval_landing_while_the_hold_is_held_starts_the_move(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, LARGE)
    await room.service.hold(CAROL, pid)
    confirmed = await room.service.confirm(ALICE, pid)
    assert "move" not in confirmed  # awaiting the second approval: nothing moves yet
    assert room.journal.count("TARGET") == 0
    await room.service.hold(CAROL, pid)
    approved = await room.service.approve(BOB, pid)
    assert approved["move"] == "started"
    assert str(room.service.workflow.state) == "MOVING"


async def test_the_move_is_held_by_the_person_who_held_before_the_confirmation(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.hold(CAROL, pid)
    await room.service.confirm(ALICE, pid)
    assert room.service.room.hold.user == "carol"


async def test_a_move_started_by_a_held_confirmation_refused_by_the_gate_keeps_the_confirmation(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, pid)
    room.plc.enable_pressed = False
    reply = await room.service.confirm(ALICE, pid)
    assert reply["move"] == "not started"
    assert "hold-to-run enable not held" in str(reply["move_refused"])
    assert str(room.service.workflow.state) == "CONFIRMED"
    assert room.journal.count("TARGET") == 0


async def test_starting_at_the_confirmation_does_not_count_as_a_heartbeat(
        tmp_path: Path) -> None:
    """The move runs from the last heartbeat that really arrived: with no more of
    them, it stops one hold timeout after that one, not after the confirmation."""
    room = await fake_room(tmp_path, hold_timeout_s=0.2)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, pid)
    held_at = room.service.room.hold.mono
    await asyncio.sleep(0.1)
    async with supervised(room):
        await room.service.confirm(ALICE, pid)
        assert room.service.room.hold.mono == held_at
        await until(lambda: str(room.service.workflow.state) == "STOPPED")


async def test_heartbeats_arriving_while_the_move_is_starting_keep_it_held(
        tmp_path: Path) -> None:
    """Between the first heartbeat and GO's answer (tens of milliseconds under disk
    load) the next heartbeats arrive: they hold the move, they do not start it again
    (which would find the confirmation spent, and STOP the couch)."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    during: list[object] = []

    async def next_heartbeats() -> None:
        during.append(await room.service.hold(ALICE, pid))
        during.append(await room.service.hold(ALICE, pid))

    room.couch.while_go_in_flight = next_heartbeats
    stops = room.journal.count("STOP")
    await room.service.hold(ALICE, pid)
    assert str(room.service.workflow.state) == "MOVING"
    assert len(during) == 2
    assert (room.journal.count("TARGET"), room.journal.count("GO"),
            room.journal.count("STOP")) == (1, 1, stops)


async def test_another_persons_heartbeat_while_the_move_is_starting_is_refused(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    refused: list[str] = []

    async def carols_heartbeat() -> None:
        try:
            await room.service.hold(CAROL, pid)
        except CommandError as exc:
            refused.append(str(exc))

    room.couch.while_go_in_flight = carols_heartbeat
    stops = room.journal.count("STOP")
    await room.service.hold(ALICE, pid)
    assert refused == ["motion is held by alice, not carol"]
    assert str(room.service.workflow.state) == "MOVING"
    assert room.journal.count("STOP") == stops
