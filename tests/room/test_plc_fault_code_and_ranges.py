"""The room PLC's fault code and out-of-range register values, proven on real wires: igrtd
as a child process, the PLC simulator on Modbus TCP and the couch simulator on a pty.

A non-zero fault code is a stop condition (docs/protocols/room-plc.md); a register value
outside its documented range is never clamped: the input it feeds reads open."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.audit import read_records
from drivers.plc import StatusRegister
from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed

MOVE = Pose(20.0, 15.0, -10.0, 0.0, 0.0, 0.0)
ARM_65535 = "room PLC value out of range: register 3 = 65535, documented 0..1000"


@pytest.fixture
def plc_room() -> Iterator[SimRoom]:
    with SimRoom(with_plc=True, couch_kwargs={"seed": 5}) as r:
        yield r


@pytest.fixture
def plc_daemon(plc_room: SimRoom, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(plc_room.room_config(tmp_path / "state"), tmp_path / "state",
                      tmp_path / "igrtd.log").start()
    yield d
    d.stop()


def _plc(room: SimRoom, fn: Callable[[Any], Any]) -> Any:
    return room.call(lambda: fn(room.plc))


def _confirmed(d: DaemonProcess) -> tuple[Console, str]:
    alice, bob = Console(d.socket_path, "alice"), Console(d.socket_path, "bob")
    alice.open_session()
    pid = alice.propose(MOVE)["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    bob.ok("approve", proposal_id=pid)
    return alice, pid


def _start_move(room: SimRoom, d: DaemonProcess) -> tuple[Console, Any]:
    alice, pid = _confirmed(d)
    _plc(room, lambda p: p.press_motion_enable())
    holder = alice.hold_in_background(pid)
    alice.wait_state("MOVING")
    deadline = time.monotonic() + 5
    while not room.call(lambda: room.couch.is_moving) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alice, holder


def _halted(room: SimRoom, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not room.call(lambda: room.couch.is_moving):
            return True
        time.sleep(0.01)
    return False


def _faults(tmp_path: Path) -> list[str]:
    return [str(r.details.get("reason")) for r in read_records(tmp_path / "state" / "audit")
            if r.event == "fault"]


def _hold_does_not_start(room: SimRoom, alice: Console, pid: str) -> str:
    """Press the enable and hold: the move must not start. Returns why, in igrtd's words
    (the refusal, or the trip the enable's PLC change caused while CONFIRMED)."""
    _plc(room, lambda p: p.press_motion_enable())
    time.sleep(0.1)  # the enable reaches igrtd
    reply = alice.call("hold", proposal_id=pid)
    if reply["ok"]:
        assert not reply["result"]["running"], reply
        return str(reply["result"]["reason"])
    return str(reply["error"])


def test_fault_code_set_mid_move_stops_the_couch_and_faults_the_room(
        plc_room: SimRoom, plc_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    _plc(plc_room, lambda p: p.set_fault_code(5))
    assert _halted(plc_room), "couch still moving after the PLC reported fault code 5"
    st = alice.wait_state("FAULT")
    holder.stop()
    assert "room PLC fault code 5" in st["reason"]
    assert any("room PLC fault code 5" in r for r in _faults(tmp_path))
    assert len(executed(plc_room, "GO")) == 1


def test_fault_code_set_before_the_move_sends_neither_target_nor_go(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    _plc(plc_room, lambda p: p.set_fault_code(5))
    alice, pid = _confirmed(plc_daemon)
    assert "room PLC fault code 5" in _hold_does_not_start(plc_room, alice, pid)
    assert executed(plc_room, "TARGET") == [] and executed(plc_room, "GO") == []


def test_fault_code_with_the_enable_already_held_is_refused_by_the_motion_gate(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    # No PLC change after the confirmation: the refusal comes from the check before
    # TARGET, not from a listener tripping the CONFIRMED room.
    _plc(plc_room, lambda p: p.press_motion_enable())
    _plc(plc_room, lambda p: p.set_fault_code(5))
    time.sleep(0.2)
    alice, pid = _confirmed(plc_daemon)
    reply = alice.call("hold", proposal_id=pid)
    assert not reply["ok"] and "interlock open: room PLC fault code 5" in reply["error"], reply
    assert executed(plc_room, "TARGET") == [] and executed(plc_room, "GO") == []


def test_fault_code_while_confirmed_spends_the_confirmation(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice, pid = _confirmed(plc_daemon)
    _plc(plc_room, lambda p: p.set_fault_code(5))
    st = alice.wait_state("STOPPED", timeout=5)
    assert "room PLC fault code 5" in st["reason"]
    _plc(plc_room, lambda p: p.set_fault_code(0))
    _hold_does_not_start(plc_room, alice, pid)  # a fresh confirmation is needed
    assert executed(plc_room, "GO") == []


def test_out_of_range_arm_position_before_the_move_refuses_it_naming_the_value(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    _plc(plc_room, lambda p: p.set_raw_register(StatusRegister.KV_SOURCE_POSITION, 65535))
    alice, pid = _confirmed(plc_daemon)
    assert ARM_65535 in _hold_does_not_start(plc_room, alice, pid)
    assert executed(plc_room, "TARGET") == [] and executed(plc_room, "GO") == []


def test_arm_far_from_parked_with_its_switch_closed_refuses_the_move(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    _plc(plc_room, lambda p: p.set_raw_register(StatusRegister.DETECTOR_POSITION, 500))
    alice, pid = _confirmed(plc_daemon)
    assert "imager arms not parked" in _hold_does_not_start(plc_room, alice, pid)
    assert executed(plc_room, "GO") == []


def test_out_of_range_arm_position_mid_move_stops_the_couch(
        plc_room: SimRoom, plc_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    _plc(plc_room, lambda p: p.set_raw_register(StatusRegister.KV_SOURCE_POSITION, 65535))
    assert _halted(plc_room), "couch still moving with an arm position of 65535"
    st = alice.wait_state("FAULT")
    holder.stop()
    assert ARM_65535 in st["reason"]
    assert any(ARM_65535 in r for r in _faults(tmp_path))


def test_fault_code_change_is_audited_even_when_idle(
        plc_room: SimRoom, plc_daemon: DaemonProcess, tmp_path: Path) -> None:
    _plc(plc_room, lambda p: p.set_fault_code(5))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        recs = [r for r in read_records(tmp_path / "state" / "audit") if r.event == "interlock"]
        if any(r.details.get("changed", {}).get("fault_code") == 5 for r in recs):
            return
        time.sleep(0.05)
    raise AssertionError("fault code 5 never appeared in the audit")


def test_arm_position_leaving_parked_mid_move_with_its_switch_closed_stops_the_couch(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    _plc(plc_room, lambda p: p.set_raw_register(StatusRegister.DETECTOR_POSITION, 500))
    assert _halted(plc_room), "couch still moving with the detector arm reported at 50 %"
    st = alice.wait_state("FAULT")
    holder.stop()
    assert "imager arm" in st["reason"]
    assert len(executed(plc_room, "GO")) == 1
