"""No TARGET to a couch controller that igrtd knows cannot take it (safety/motion.py).

The controller takes TARGET and GO only in IDLE or ARMED; in FAULT, MOVING or
STOPPING it NAKs TARGET bad_state (docs/protocols/couch-serial.md). The
reproduced defect (bench/confirm_bench.py under load): igrtd's event loop,
busy on a loaded machine, let more than the controller's 250 ms watchdog pass
between two heartbeats while the room was STANDBY; the controller went to
FAULT(heartbeat_lost) and pushed that STATUS, and igrtd, which acts on a
controller FAULT only during a move, kept the room as it was. The next
confirmed move sent TARGET anyway: NAK bad_state after the apply-once claim, so
the confirmation was spent and the couch STOPped ("couch controller refused
TARGET: bad_state"). The MotionGate now refuses on the state of the latest
status: nothing is sent, the reason names the state, the confirmation stays.
A FAULT pushed while nothing moves also latches the room
(tests/rules/test_controller_fault_rules.py); the gate's rule is what stands
for a STOP still winding down, and for a FAULT in a status the room has not
acted on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeRoom, fake_room

from daemon.api import CommandError

from .helpers import ALICE, SMALL, propose


def controller_reports(room: FakeRoom, state: str) -> None:
    """The controller pushes a STATUS in `state` (the couch link tells the room)."""
    room.couch.state = state
    room.couch.push()


def controller_state_read(room: FakeRoom, state: str) -> None:
    """The latest status igrtd holds says `state`; no listener has been told yet."""
    room.couch.state = state
    room.couch._make_status()


def device_commands_since(room: FakeRoom, n: int) -> list[str]:
    return [w for w, _ in room.journal.entries[n:] if not w.startswith("audit:")]


@pytest.mark.parametrize("state", ["FAULT", "STOPPING"])
async def test_a_controller_that_cannot_take_a_target_is_sent_nothing_and_the_confirmation_stays(
        tmp_path: Path, state: str) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    controller_state_read(room, state)
    before = len(room.journal.entries)
    with pytest.raises(CommandError, match=(
            rf"move not started: couch controller reports {state}: "
            r"couch_move needs it ARMED or IDLE")):
        await room.service.hold(ALICE, pid)
    assert device_commands_since(room, before) == []  # no TARGET, and no STOP either
    assert str(room.service.workflow.state) == "CONFIRMED"
    refused = room.audit.events("motion_refused")
    assert refused and f"couch controller reports {state}" in str(refused[-1]["reasons"])
    # The confirmation is kept: with the controller IDLE again, the next heartbeat moves.
    controller_reports(room, "IDLE")
    progress = await room.service.hold(ALICE, pid)
    assert progress["state"] == "MOVING"
    assert room.journal.count("TARGET") == 1 and room.journal.count("GO") == 1


async def test_a_confirmation_landing_while_held_says_why_the_move_did_not_start(
        tmp_path: Path) -> None:
    """The bench's path: hold-to-run held, then the confirm starts the move as it lands."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.hold(ALICE, pid)
    controller_state_read(room, "STOPPING")
    reply = await room.service.confirm(ALICE, pid)
    assert reply["move"] == "not started"
    assert "couch controller reports STOPPING" in str(reply["move_refused"])
    assert room.journal.count("TARGET") == 0
    assert str(room.service.workflow.state) == "CONFIRMED"


async def test_a_last_status_that_may_be_stale_is_read_afresh_before_a_move(
        tmp_path: Path) -> None:
    """The controller's IDLE push after a move was lost on a silent line: igrtd's last
    status says MOVING. The gate reads the controller before it refuses."""
    room = await fake_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    controller_state_read(room, "MOVING")
    room.couch.state = "IDLE"  # where the controller really is
    progress = await room.service.hold(ALICE, pid)
    assert progress["state"] == "MOVING"
