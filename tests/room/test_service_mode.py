"""Service mode: service role only, clinical workflow locked out, reduced-speed jog."""

from __future__ import annotations

import time

from sim.room import DaemonProcess

from .conftest import Console, executed


def _sam(d: DaemonProcess) -> Console:
    return Console(d.socket_path, "sam")


def test_only_the_service_role_enters_service_mode(daemon: DaemonProcess, alice: Console) -> None:
    reply = alice.call("enter_service")
    assert not reply["ok"] and "service" in reply["error"]
    assert _sam(daemon).ok("enter_service")["state"] == "SERVICE"


def test_clinical_workflow_is_locked_out_in_service_mode(daemon: DaemonProcess,
                                                         alice: Console) -> None:
    _sam(daemon).ok("enter_service")
    reply = alice.call("open_session", patient_id="P", plan_uid="x", frame_of_reference_uid="f",
                       iso=[0, 0, 0], patient_position="HFS", manual_override="typed for the test room")
    assert not reply["ok"]


def test_jog_moves_one_axis_at_reduced_speed(room, daemon: DaemonProcess) -> None:
    sam = _sam(daemon)
    sam.ok("enter_service")
    before = room.couch_pose
    for _ in range(5):
        sam.ok("jog", axis="lat", velocity=2.0, duration_ms=200)
        time.sleep(0.15)
    time.sleep(0.4)
    moved = room.couch_pose.minus(before)
    assert 0.3 < moved.lat < 2.5, moved
    assert abs(moved.long) < 0.1 and abs(moved.vert) < 0.1
    assert len(executed(room, "JOG")) == 5


def test_jog_faster_than_the_service_limit_is_refused(room, daemon: DaemonProcess) -> None:
    sam = _sam(daemon)
    sam.ok("enter_service")
    reply = sam.call("jog", axis="vert", velocity=25.0, duration_ms=200)
    assert not reply["ok"]
    assert "25 mm/s" in reply["error"] and "2 mm/s" in reply["error"]
    assert executed(room, "JOG") == []


def test_jog_outside_service_mode_is_refused(room, daemon: DaemonProcess) -> None:
    reply = _sam(daemon).call("jog", axis="lat", velocity=1.0, duration_ms=200)
    assert not reply["ok"]
    assert executed(room, "JOG") == []


def test_leaving_service_mode_returns_to_standby(daemon: DaemonProcess) -> None:
    sam = _sam(daemon)
    sam.ok("enter_service")
    assert sam.ok("exit_service")["state"] == "STANDBY"
