"""Interlocks from the room PLC (real Modbus TCP socket) stop motion, and motion
does not resume when they close again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed

MOVE = Pose(20.0, 15.0, -10.0, 0.0, 0.0, 0.0)


def _plc(room: SimRoom, fn: Callable[[Any], Any]) -> Any:
    return room.call(lambda: fn(room.plc))


def _start_move(room: SimRoom, d: DaemonProcess) -> tuple[Console, Any]:
    alice, bob = Console(d.socket_path, "alice"), Console(d.socket_path, "bob")
    alice.open_session()
    prop = alice.propose(MOVE)["result"]
    alice.ok("confirm", proposal_id=prop["id"])
    bob.ok("approve", proposal_id=prop["id"])
    _plc(room, lambda p: p.press_motion_enable())
    holder = alice.hold_in_background(prop["id"])
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


def test_move_needs_the_plc_motion_enable_held(plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice, bob = Console(plc_daemon.socket_path, "alice"), Console(plc_daemon.socket_path, "bob")
    alice.open_session()
    prop = alice.propose(MOVE)["result"]
    alice.ok("confirm", proposal_id=prop["id"])
    bob.ok("approve", proposal_id=prop["id"])
    reply = alice.call("hold", proposal_id=prop["id"])
    assert not reply["ok"] and "hold-to-run" in reply["error"]
    assert executed(plc_room, "GO") == []


@pytest.mark.parametrize("open_it, close_it", [
    (lambda p: p.open_door(), lambda p: p.close_door()),
    (lambda p: p.press_estop(), lambda p: p.reset_estop()),
    (lambda p: p.touch_collision_pad(), lambda p: p.clear_collision_pad()),
    (lambda p: p.release_motion_enable(), lambda p: p.press_motion_enable()),
    (lambda p: p.freeze_heartbeat(), lambda p: p.resume_heartbeat()),
    (lambda p: p.set_input("imager_kv_source_parked", False),
     lambda p: p.set_input("imager_kv_source_parked", True)),
], ids=["door", "estop", "collision_pad", "motion_enable", "plc_heartbeat", "imager_arm"])
def test_opening_an_interlock_during_a_move_stops_it_for_good(
        plc_room: SimRoom, plc_daemon: DaemonProcess, open_it: Any, close_it: Any) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    _plc(plc_room, open_it)
    assert _halted(plc_room), "couch still moving after the interlock opened"
    st = alice.wait_state("FAULT", "STOPPED")
    _plc(plc_room, close_it)
    time.sleep(0.5)
    assert not plc_room.call(lambda: plc_room.couch.is_moving)
    assert alice.ok("status")["state"] == st["state"]
    assert len(executed(plc_room, "GO")) == 1
    holder.stop()


def test_dropped_plc_connection_stops_the_move(plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    _plc(plc_room, lambda p: p.drop_connections())
    assert _halted(plc_room)
    alice.wait_state("FAULT", "STOPPED")
    holder.stop()


def test_interlocks_command_shows_every_input_with_state_and_age(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice = Console(plc_daemon.socket_path, "alice")
    time.sleep(0.2)
    view = alice.ok("interlocks")
    names = {i["name"] for i in view["inputs"]}
    assert {"door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed"} <= names
    assert all("age_s" in i for i in view["inputs"])
    assert view["link_ok"] is True


def test_interlock_changes_are_audited(plc_room: SimRoom, plc_daemon: DaemonProcess,
                                       tmp_path: Path) -> None:
    _plc(plc_room, lambda p: p.open_door())
    time.sleep(0.3)
    from daemon.audit import read_records

    recs = [r for r in read_records(tmp_path / "state" / "audit") if r.event == "interlock"]
    assert any(r.details.get("changed", {}).get("door_closed") is False for r in recs)
