"""An interlock opening shorter than igrtd's PLC poll, mid-move, stops the couch and
faults the room, audited (issue 11, item 13: pulses down to a single PLC scan).

The simulated PLC runs without pulse stretching here, so the opening is visible on
the wire for less than one host poll: only the opening counter (register 7) can
tell igrtd (docs/protocols/room-plc.md, "Short openings")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.audit import read_records
from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed

MOVE = Pose(20.0, 15.0, -10.0, 0.0, 0.0, 0.0)


@pytest.fixture
def pulse_room() -> Iterator[SimRoom]:
    with SimRoom(with_plc=True, couch_kwargs={"seed": 5}, plc_kwargs={"min_open_s": 0.0}) as r:
        yield r


@pytest.fixture
def pulse_daemon(pulse_room: SimRoom, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(pulse_room.room_config(tmp_path / "state"), tmp_path / "state",
                      tmp_path / "igrtd.log").start()
    yield d
    d.stop()


def _start_move(room: SimRoom, d: DaemonProcess) -> tuple[Console, Any]:
    alice, bob = Console(d.socket_path, "alice"), Console(d.socket_path, "bob")
    alice.open_session()
    prop = alice.propose(MOVE)["result"]
    alice.ok("confirm", proposal_id=prop["id"])
    bob.ok("approve", proposal_id=prop["id"])
    room.call(lambda: room.plc.press_motion_enable())
    holder = alice.hold_in_background(prop["id"])
    alice.wait_state("MOVING")
    deadline = time.monotonic() + 5
    while not room.call(lambda: room.couch.is_moving) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert room.call(lambda: room.couch.is_moving), "the move did not start"
    return alice, holder


def _pulse(plc: Any, name: str) -> None:
    # Opened and closed again within one call on the PLC's loop: no poll can see the bit.
    plc.set_input(name, False)
    plc.set_input(name, True)


def _halted(room: SimRoom, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not room.call(lambda: room.couch.is_moving):
            return True
        time.sleep(0.01)
    return False


def test_collision_pad_pulse_shorter_than_a_poll_stops_the_move_and_faults_the_room(
        pulse_room: SimRoom, pulse_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice, holder = _start_move(pulse_room, pulse_daemon)
    try:
        pulse_room.call(lambda: _pulse(pulse_room.plc, "collision_pads_clear"))
        assert pulse_room.call(lambda: pulse_room.plc.input("collision_pads_clear"))
        assert _halted(pulse_room), "couch still moving after a collision pad opened"
        assert alice.wait_state("FAULT")["state"] == "FAULT"
    finally:
        holder.stop()
    assert len(executed(pulse_room, "GO")) == 1
    assert executed(pulse_room, "STOP")
    faults = [r for r in read_records(tmp_path / "state" / "audit") if r.event == "fault"]
    assert any("collision pad pressed for a moment" in str(r.details.get("reason"))
               for r in faults), [r.details for r in faults]


def test_motion_enable_pulse_shorter_than_a_poll_stops_the_move(
        pulse_room: SimRoom, pulse_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice, holder = _start_move(pulse_room, pulse_daemon)
    try:
        pulse_room.call(lambda: _pulse(pulse_room.plc, "motion_enable_pressed"))
        assert _halted(pulse_room), "couch still moving after the motion enable was let go"
        assert alice.wait_state("STOPPED", "FAULT")["state"] in ("STOPPED", "FAULT")
    finally:
        holder.stop()
    stops = [r for r in read_records(tmp_path / "state" / "audit")
             if r.event in ("motion_stopped", "fault")]
    assert any("motion enable released" in str(r.details.get("reason")) for r in stops)


@pytest.mark.parametrize("register, value", [(3, 65535), (6, 65535)],
                         ids=["arm_position", "map_version"])
def test_register_forced_out_of_range_for_40_ms_stops_the_move_as_fast_as_an_opening(
        pulse_room: SimRoom, pulse_daemon: DaemonProcess, register: int, value: int) -> None:
    alice, holder = _start_move(pulse_room, pulse_daemon)
    plc = pulse_room.plc

    def force() -> float:
        plc.set_raw_register(register, value)
        asyncio.get_running_loop().call_later(0.04, plc.set_raw_register, register, None)
        return time.monotonic()

    try:
        forced_at = pulse_room.call(force)
        assert _halted(pulse_room), "couch still moving after a register left its range"
        alice.wait_state("FAULT")
    finally:
        holder.stop()
    stop_at = min(e.t for e in executed(pulse_room, "STOP") if e.t >= forced_at)
    # A few polls and one STOP frame, not the 100 ms heartbeat staleness limit.
    assert stop_at - forced_at < 0.08
