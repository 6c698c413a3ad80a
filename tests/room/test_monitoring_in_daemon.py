"""Intrafraction monitoring as a feature of igrtd: a real daemon process, the
simulated room PLC over Modbus TCP, and the simulated kV imaging system
streaming frames to igrtd's imager socket.

Policy for these tests: 3 mm tolerance, 0.2 s debounce, 0.3 s release, 0.5 s
maximum image age, 10 frames per second of 128 x 128 stereo views.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.waiting import until

from daemon.audit import read_records
from daemon.config import MonitoringConfig
from drivers.kv_imager import PREFIX, KvProtocolError, decode_frame, encode_frame
from safety.couch_model import CouchModel
from safety.motion import KINDS, MotionRequest, authorize_motion
from safety.pose import Pose
from sim.intrafraction import COMPACT_PAIR, MARKERS_MM, TARGET_MM
from sim.kv_stream import SimKvImager, views_config
from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed

OUT_MM = (4.5, 0.0, 1.5)  # 4.7 mm from the plan: beyond the 3 mm tolerance
MONITORING = {
    "frame_rate_hz": 10.0,
    "tolerance_mm": 3.0,
    "debounce_s": 0.2,
    "release_after_s": 0.3,
    "max_image_age_s": 0.5,
    "views": views_config(COMPACT_PAIR),
}


# ----------------------------------------------------------------- fixtures
@pytest.fixture
def room() -> Iterator[SimRoom]:
    with SimRoom(with_plc=True, couch_kwargs={"seed": 11}) as r:
        yield r


@pytest.fixture
def daemon(room: SimRoom, state: Path, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(room.room_config(state, monitoring=MONITORING), state,
                      tmp_path / "igrtd.log").start()
    yield d
    d.stop()


@pytest.fixture
def imager(room: SimRoom, daemon: DaemonProcess, state: Path) -> Iterator[SimKvImager]:
    kv = SimKvImager(state / "kv.sock", COMPACT_PAIR, MARKERS_MM, seed=4)
    room.run(kv.connect())
    yield kv
    room.run(kv.close())


def _coil(room: SimRoom) -> bool:
    return bool(room.call(lambda: room.plc.coil("beam_hold")))


def _set_scene(room: SimRoom, kv: SimKvImager, d: tuple[float, float, float]) -> None:
    room.call(lambda: setattr(kv, "displacement", d))


def _audit(state: Path, event: str) -> list[Any]:
    return list(read_records(state / "audit", event=event))


def _ready(alice: Console) -> None:
    """Session open, PLC link up, imaging system connected."""
    alice.open_session()
    until(lambda: alice.ok("interlocks")["link_ok"], what="PLC link up")
    until(lambda: alice.ok("monitor_status")["imager"]["connected"], what="imager connected")


def _start_monitoring(alice: Console, room: SimRoom, kv: SimKvImager) -> dict[str, Any]:
    _ready(alice)
    result = alice.ok("monitor_start", markers_mm=[list(m) for m in MARKERS_MM],
                      target_mm=list(TARGET_MM))
    until(lambda: room.call(lambda: kv.acquiring), what="acquisition started")
    # A few in-tolerance frames: the monitor has a valid estimate before anything else.
    until(lambda: (alice.ok("monitor_status")["run"]["last_frame"] or {}).get("hold") is False,
           what="first in-tolerance estimate")
    return result


# -------------------------------------------------------------- beam hold
def test_drift_beyond_tolerance_holds_the_beam_through_the_plc_and_audits_it(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path) -> None:
    _start_monitoring(alice, room, imager)
    assert alice.ok("status")["state"] == "MONITORING"
    assert not _coil(room)
    _set_scene(room, imager, OUT_MM)
    until(lambda: _coil(room), what="beam-hold coil set")
    holds = _audit(state, "beam_hold")
    assert holds and holds[-1].details["cause"] == "deviation"
    assert holds[-1].details["deviation_norm_mm"] > 3.0


def test_target_back_within_tolerance_releases_the_beam(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path) -> None:
    _start_monitoring(alice, room, imager)
    _set_scene(room, imager, OUT_MM)
    until(lambda: _coil(room), what="beam-hold coil set")
    _set_scene(room, imager, (0.0, 0.0, 0.0))
    until(lambda: not _coil(room), what="beam-hold coil released")
    assert [r.details["cause"] for r in _audit(state, "beam_release")] == ["in_tolerance"]
    status = alice.ok("monitor_status")["run"]
    assert (status["holds"], status["releases"]) == (1, 1)


def test_losing_the_imager_link_holds_the_beam_at_once(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path) -> None:
    _start_monitoring(alice, room, imager)
    room.run(imager.close())
    t_lost = time.monotonic()
    until(lambda: _coil(room), what="beam-hold coil set")
    # Well before the 0.5 s stale-image rule would have held it.
    assert time.monotonic() - t_lost < 0.45
    assert _audit(state, "beam_hold")[-1].details["cause"] == "imager_link_lost"
    assert alice.ok("status")["state"] == "MONITORING"


def test_a_reconnected_imager_releases_only_after_an_in_tolerance_run(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _start_monitoring(alice, room, imager)
    room.run(imager.close())
    until(lambda: _coil(room), what="beam-hold coil set")
    _set_scene(room, imager, OUT_MM)
    room.run(imager.connect())
    time.sleep(0.8)
    assert _coil(room), "released although the target is out of tolerance"
    _set_scene(room, imager, (0.0, 0.0, 0.0))
    until(lambda: not _coil(room), what="beam-hold coil released")
    assert alice.ok("monitor_status")["run"]["segments"] == 2


def test_bad_frame_bytes_during_monitoring_drop_the_link_and_hold_the_beam(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path) -> None:
    _start_monitoring(alice, room, imager)
    room.run(imager.send_raw(PREFIX.pack(b"IGKV", 10, 0) + b"not json!!"))
    until(lambda: _coil(room), what="beam-hold coil set")
    rejected = _audit(state, "imager_frame_rejected")
    assert len(rejected) == 1 and "\n" not in rejected[0].details["error"]
    assert "not UTF-8 JSON" in rejected[0].details["error"]
    assert alice.ok("status")["state"] == "MONITORING"


@pytest.mark.parametrize("garbage", [
    b"GARBAGE-GARBAGE-GARBAGE",
    PREFIX.pack(b"IGKV", 2, 4) + b"{}" + b"\0\0\0\0",
    PREFIX.pack(b"IGKV", 100, 1 << 31),
], ids=["bad_magic", "header_missing_fields", "oversized_payload"])
def test_bad_frame_bytes_are_dropped_with_a_one_line_error_and_change_nothing(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path, tmp_path: Path, garbage: bytes) -> None:
    alice.open_session()
    before = alice.ok("status")
    room.run(imager.send_raw(garbage))
    until(lambda: alice.ok("monitor_status")["imager"]["frames_rejected"] == 1,
           what="frame rejected")
    after = alice.ok("status")
    assert (after["state"], after["session"]) == (before["state"], before["session"])
    assert not _coil(room)
    errors = [r.details["error"] for r in _audit(state, "imager_frame_rejected")]
    assert len(errors) == 1 and "\n" not in errors[0]
    log = (tmp_path / "igrtd.log").read_text()
    assert errors[0] in log and "Traceback" not in log
    # The imaging system may connect again and be used.
    room.run(imager.close())
    room.run(imager.connect())
    until(lambda: alice.ok("monitor_status")["imager"]["connected"], what="reconnected")


def test_frames_from_another_geometry_give_no_estimate_and_hold_the_beam(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _start_monitoring(alice, room, imager)
    room.call(lambda: setattr(imager, "geometries", (COMPACT_PAIR[0], COMPACT_PAIR[0])))
    until(lambda: _coil(room), what="beam-hold coil set")

    def named() -> dict[str, Any] | None:
        last = alice.ok("monitor_status")["run"]["last_frame"]
        return last if "angle" in last["reason"] else None

    last = until(named, what="geometry named")
    assert last["deviation_mm"] is None
    assert "view 1: angle 0 deg differs from the commissioned 90 deg" in last["reason"]


# ---------------------------------------------------------- nothing moves
def test_no_couch_motion_command_reaches_the_couch_during_monitoring(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _start_monitoring(alice, room, imager)
    room.call(lambda: room.plc.press_motion_enable())
    proposal = alice.propose(Pose(4.0, 3.0, -2.0, 0.0, 0.0, 0.0))
    assert not proposal["ok"] and "MONITORING" in proposal["error"]
    confirm = alice.call("confirm", proposal_id="prop-anything")
    hold = alice.call("hold", proposal_id="prop-anything")
    assert not confirm["ok"] and not hold["ok"]
    assert "beam is on" in hold["error"]
    _set_scene(room, imager, OUT_MM)  # a hold for deviation suggests nothing to the couch
    until(lambda: _coil(room), what="beam-hold coil set")
    assert alice.ok("status")["state"] == "MONITORING"
    assert [executed(room, k) for k in ("TARGET", "GO", "JOG")] == [[], [], []]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_kind_of_motion_is_permitted_while_monitoring(kind: str) -> None:
    decision = authorize_motion(MotionRequest(
        kind=kind, room_state="MONITORING", target=Pose(), current=Pose(),
        confirmation_id="c", confirmed_at=0.0, deadline=10.0, now=1.0, open_interlocks=[],
        couch_moving=False, imager_arms_parked=True, imager_moving=False,
        hold_to_run_fresh=True, model=CouchModel.default()))
    assert not decision.allowed
    assert any("room state MONITORING does not permit" in r for r in decision.reasons)


def test_couch_tracking_cannot_be_enabled_in_the_configuration() -> None:
    with pytest.raises(ValueError, match="couch_tracking: true is not supported"):
        MonitoringConfig(couch_tracking=True)


# ------------------------------------------------------- starting, ending
def test_monitoring_needs_a_connected_imaging_system(
        room: SimRoom, daemon: DaemonProcess, alice: Console) -> None:
    alice.open_session()
    until(lambda: alice.ok("interlocks")["link_ok"], what="PLC link up")
    reply = alice.call("monitor_start", markers_mm=[list(MARKERS_MM[0])])
    assert not reply["ok"] and "no kV imaging system is connected" in reply["error"]
    assert alice.ok("status")["state"] == "READY"


def test_a_treatment_may_only_tighten_the_site_tolerance(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _ready(alice)
    reply = alice.call("monitor_start", markers_mm=[list(MARKERS_MM[0])], tolerance_mm=5.0)
    assert not reply["ok"]
    assert "tolerance 5.0 mm is looser than the site's 3.0 mm" in reply["error"]


def test_monitor_stop_leaves_a_hold_asserted_unless_the_therapist_releases_it(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console,
        state: Path) -> None:
    _start_monitoring(alice, room, imager)
    _set_scene(room, imager, OUT_MM)
    until(lambda: _coil(room), what="beam-hold coil set")
    result = alice.ok("monitor_stop")
    assert result["beam_held"] is True and _coil(room)
    assert alice.ok("status")["state"] == "READY"
    assert room.call(lambda: imager.commands[-1])["cmd"] == "stop"
    # Next beam-on starts held; the therapist ends it releasing the hold explicitly.
    _set_scene(room, imager, OUT_MM)
    alice.ok("monitor_start", markers_mm=[list(MARKERS_MM[0])])
    stopped = alice.ok("monitor_stop", release_hold=True)
    assert "release_error" not in stopped, stopped
    assert not _coil(room)
    assert _audit(state, "beam_release")[-1].actor == "alice"


def test_stopping_igrtd_during_monitoring_holds_the_beam(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _start_monitoring(alice, room, imager)
    assert not _coil(room)
    assert daemon.stop() == 0
    assert _coil(room)


def test_losing_the_plc_link_during_monitoring_is_a_fault_and_the_hold_follows(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _start_monitoring(alice, room, imager)
    room.call(lambda: room.plc.drop_connections())
    alice.wait_state("FAULT", timeout=5)
    # The PLC link comes back by itself; the hold is written as soon as it does.
    until(lambda: _coil(room), what="beam-hold coil set after the PLC link returned")
    assert not alice.ok("monitor_status")["active"]


def test_igrtctl_monitor_start_status_stop(
        room: SimRoom, daemon: DaemonProcess, imager: SimKvImager, alice: Console) -> None:
    _ready(alice)

    def igrtctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.igrtctl", "--socket",
                               str(daemon.socket_path), "--user", "alice", *args],
                              check=False, text=True, capture_output=True, timeout=30)

    marker = ",".join(str(v) for v in MARKERS_MM[0])
    assert igrtctl("monitor", "start", "--marker", marker).returncode == 0
    status = json.loads(igrtctl("monitor", "status", "--json").stdout)
    assert status["active"] and status["imager"]["connected"]
    again = igrtctl("monitor", "start", "--marker", marker)
    assert again.returncode == 1 and again.stderr.count("\n") == 1  # one-line refusal
    assert igrtctl("monitor", "stop").returncode == 0
    assert alice.ok("status")["state"] == "READY"


# ------------------------------------------------------ wire protocol alone
def _frame_bytes(images: tuple[Any, ...]) -> bytes:
    return encode_frame(7, 1.7e9, COMPACT_PAIR, images)


def test_a_frame_survives_the_wire_bit_for_bit() -> None:
    images = tuple(np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
                   for _ in COMPACT_PAIR)
    data = _frame_bytes(images)
    _, n_header, _ = PREFIX.unpack(data[:PREFIX.size])
    frame = decode_frame(data[PREFIX.size:PREFIX.size + n_header], data[PREFIX.size + n_header:])
    assert (frame.frame_id, frame.acquired_at) == (7, 1.7e9)
    assert frame.geometries == COMPACT_PAIR
    assert all(np.array_equal(a, b) for a, b in zip(frame.images, images))


def test_a_frame_with_non_finite_pixels_is_refused_naming_the_view() -> None:
    images = [np.zeros((128, 128), np.float32) for _ in COMPACT_PAIR]
    images[1][5, 5] = np.nan
    data = _frame_bytes(tuple(images))
    _, n_header, _ = PREFIX.unpack(data[:PREFIX.size])
    with pytest.raises(KvProtocolError, match="frame 7 view 1: 1 non-finite pixels"):
        decode_frame(data[PREFIX.size:PREFIX.size + n_header], data[PREFIX.size + n_header:])
