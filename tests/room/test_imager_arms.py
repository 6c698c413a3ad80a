"""Imager arms through igrtd: the couch never moves while an arm is out, and an arm
never moves while the couch moves."""

from __future__ import annotations

import time

from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed
from .test_interlocks import MOVE, _plc, _start_move


def _wait(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_arms_need_the_motion_enable_pendant(plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    alice = Console(plc_daemon.socket_path, "alice")
    reply = alice.call("arms", extend=True)
    assert not reply["ok"] and "hold-to-run" in reply["error"]
    assert not _plc(plc_room, lambda p: p.coil("kv_source_extend"))


def test_couch_does_not_move_while_the_arms_are_out(plc_room: SimRoom,
                                                    plc_daemon: DaemonProcess) -> None:
    alice, bob = Console(plc_daemon.socket_path, "alice"), Console(plc_daemon.socket_path, "bob")
    _plc(plc_room, lambda p: p.press_motion_enable())
    assert _wait(lambda: alice.ok("status")["interlocks"]["motion_enable_pressed"] is True)
    alice.ok("arms", extend=True)
    assert _wait(lambda: _plc(plc_room, lambda p: p.arm_position_pct("kv_source")) > 99)
    alice.open_session()
    prop = alice.propose(MOVE)["result"]
    alice.ok("confirm", proposal_id=prop["id"])
    bob.ok("approve", proposal_id=prop["id"])
    reply = alice.call("hold", proposal_id=prop["id"])
    assert not reply["ok"] and "imager arms not parked" in reply["error"]
    assert executed(plc_room, "GO") == []


def test_arms_do_not_move_while_the_couch_moves(plc_room: SimRoom,
                                                plc_daemon: DaemonProcess) -> None:
    alice, holder = _start_move(plc_room, plc_daemon)
    reply = alice.call("arms", extend=True)
    assert not reply["ok"]
    assert not _plc(plc_room, lambda p: p.coil("kv_source_extend"))
    holder.stop()


def test_an_arm_command_in_standby_is_judged_on_a_read_taken_after_it_arrived(
        plc_room: SimRoom, plc_daemon: DaemonProcess) -> None:
    # STANDBY polls the PLC every 500 ms: without a fresh read the pendant pressed
    # just now would not be seen yet, nor a door opened just now.
    alice = Console(plc_daemon.socket_path, "alice")
    assert alice.ok("status")["state"] == "STANDBY"
    time.sleep(0.6)  # settled at the standby rate
    _plc(plc_room, lambda p: p.set_input("door_closed", False))
    _plc(plc_room, lambda p: p.press_motion_enable())
    reply = alice.call("arms", extend=True)
    assert not reply["ok"] and "door" in reply["error"]
    _plc(plc_room, lambda p: p.set_input("door_closed", True))
    _plc(plc_room, lambda p: p.release_motion_enable())
    assert _wait(lambda: not alice.ok("status")["interlocks"]["open"])
    time.sleep(0.6)
    _plc(plc_room, lambda p: p.press_motion_enable())
    alice.ok("arms", extend=True)
    assert _plc(plc_room, lambda p: p.coil("kv_source_extend"))
