"""Motion safety through the real wires (issue 11, items 2, 4, 5): igrtd as a child
process, the couch simulator on a pty, the PLC simulator on Modbus TCP.

* a correction is refused when the couch is not where it was imaged, at
  propose and again in the MotionGate before anything is sent;
* a couch that moves with nothing commanded is stopped, audited and latched;
* a reported pose impossible for the commanded move stops the couch and faults.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.audit import read_records
from daemon.control import ControlClient
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.couch import DEFAULT_MAX_VELOCITY
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

from .conftest import FOR, ISO, PATIENT, PLAN

PIVOT = tuple(CouchModel.default().pivot)
# The site's couch model names the axis speeds (a quarter above the simulator's):
# the plausibility check uses them rather than igrtd's generous fallback.
MAX_SPEED = {a: v * 1.25 for a, v in DEFAULT_MAX_VELOCITY.items()}


class Rig:
    """Couch on a pty, PLC on Modbus TCP, igrtd as a child process; production policy."""

    def __init__(self, room: SimRoom, daemon: DaemonProcess) -> None:
        self.room = room
        self.daemon = daemon
        self.alice = ControlClient(daemon.socket_path, "alice")
        self.bob = ControlClient(daemon.socket_path, "bob")
        self._holders: list[_Holder] = []

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self.alice.call(cmd, **args)

    def ok(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = self.call(cmd, **args)
        assert reply["ok"], reply
        return reply["result"]

    def status(self) -> dict[str, Any]:
        return self.ok("status")

    def wait_until(self, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached the expected state; last {st['state']} "
                                     f"({st['reason']})")
            time.sleep(0.005)

    def sim(self, fn: Any) -> Any:
        return self.room.call(lambda: fn(self.room.couch, self.room.plc))

    def couch_pose(self) -> Pose:
        return self.room.couch_pose

    def couch_moving(self) -> bool:
        return bool(self.room.call(lambda: self.room.couch.is_moving))

    def propose_to(self, target: Pose, at_imaging: Pose, *, claim: bool = True,
                   uid: str | None = None) -> dict[str, Any]:
        """The proposal a perfect registration gives when `target` is right; `claim`:
        the request names the couch pose at imaging (as an unrecorded session would)."""
        world = PatientWorld.with_setup_error(ISO, "HFS", PIVOT, target)  # type: ignore[arg-type]
        matrix = np.asarray(world.true_registration(at_imaging)).tolist()
        extra = {"couch_at_imaging": at_imaging.as_dict()} if claim else {}
        return self.ok("propose", matrix=matrix, iso=list(ISO), patient_position="HFS",
                       binding={"patient_id": PATIENT, "plan_uid": PLAN,
                                "frame_of_reference_uid": FOR,
                                "imaging_session_uid": uid or f"IMG-{time.monotonic_ns()}",
                                "acquired_at": time.time()}, **extra)

    def confirm(self, prop: dict[str, Any]) -> None:
        self.ok("confirm", proposal_id=prop["id"])
        if prop["verdict"] == "needs_second_approval":
            reply = self.bob.call("approve", proposal_id=prop["id"])
            assert reply["ok"], reply

    def hold(self, pid: str) -> _Holder:
        h = _Holder(self.daemon.socket_path, pid)
        self._holders.append(h)
        return h

    def close(self) -> None:
        for h in self._holders:
            h.stop()
        self.alice.close()
        self.bob.close()


class _Holder:
    def __init__(self, sock: Path, pid: str) -> None:
        import threading

        self.client = ControlClient(sock, "alice")
        self.pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.call("hold", proposal_id=self.pid)
            except OSError:
                return
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # An instant pty, not the wire model at the configured baud (the fault campaign runs its
    # rooms on the wire model). The wire was once blamed for
    # test_a_runaway_while_a_stop_winds_down_is_caught_as_one answering the runaway
    # with a second STOP instead of FAULT; it failed on the instant pty too, and
    # the cause was igrtd's (daemon/couch_watch.py ordered the runaway's MOVING
    # against the newest STOPPING push, which could share its millisecond). Since
    # the fix that runaway is caught on the wire model too; the file as a whole
    # has not been moved to it.
    with SimRoom(with_plc=True, couch_kwargs={"seed": 7, "baudrate": None}) as room:
        room.call(lambda: room.plc.press_motion_enable())
        model = CouchModel.default().model_dump(mode="json")
        model["max_speed"] = MAX_SPEED
        cfg = room.room_config(tmp_path / "state", couch_model=model)
        d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
        r = Rig(room, d)
        try:
            r.ok("open_session", patient_id=PATIENT, plan_uid=PLAN, frame_of_reference_uid=FOR,
                 iso=list(ISO), patient_position="HFS", manual_override="typed for the test room")
            yield r
        finally:
            r.close()
            d.stop()


def _kinds_since(rig: Rig, t0: float) -> list[str]:
    return rig.room.call(lambda: [e.kind for e in rig.room.couch.executed_commands if e.t >= t0])


def _first(rig: Rig, kind: str, t0: float) -> float | None:
    times = rig.room.call(lambda: [e.t for e in rig.room.couch.executed_commands
                                   if e.kind == kind and e.t >= t0])
    return times[0] if times else None


def _wait_first(rig: Rig, kind: str, t0: float, timeout: float = 1.0) -> float | None:
    """`_first`, once the simulator has recorded one (None after `timeout`): a command
    igrtd wrote before answering on its socket may not have reached the simulator's
    thread through the pty yet."""
    deadline = time.monotonic() + timeout
    while (at := _first(rig, kind, t0)) is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return at


def _faults(rig: Rig, what: str) -> list[Any]:
    return [r for r in read_records(rig.daemon.state_dir / "audit")
            if r.event == "fault" and r.details.get("what") == what]


def _plc_vouched(rig: Rig) -> None:
    """The room PLC read and vouched for at the rate of the state the room is in (a
    test about the couch must not race the PLC's picture after a state change)."""
    rig.wait_until(lambda s: not s["interlocks"]["open"], timeout=2.0)


def _here(rig: Rig) -> Pose:
    return Pose.from_dict(rig.status()["couch"]["pose"])


def _set_couch_pose(rig: Rig, pose: Pose) -> None:
    """Move the couch without any command (by hand, brakes released)."""
    rig.sim(lambda couch, plc: couch.set_pose(pose))


def _halted(rig: Rig, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while rig.couch_moving():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# ---------------------------------------------------------- item 2: travel


def test_a_small_correction_from_a_claimed_imaging_pose_far_from_the_couch_is_refused(
        rig: Rig) -> None:
    """The reproduced defect: couch at lat 0, request says it was imaged at lat 150 and
    the registration asks for +2 mm. Before the fix: needs_confirmation, and a GO to
    lat 152 went out."""
    t0 = time.monotonic()
    here = _here(rig)
    prop = rig.propose_to(Pose(lat=here.lat + 152.0), Pose(lat=here.lat + 150.0))
    assert prop["verdict"] == "refused", prop
    reasons = " | ".join(prop["reasons"])
    assert re.search(r"which igrtd did not record, differs from the current couch pose: "
                     r"lat -(149\.9\d|150\.0\d) mm .*limit 0\.50 mm", reasons), reasons
    assert re.search(r"travel \(target minus current couch pose\): vector shift 15\d\.\d\d mm "
                     r"exceeds refusal limit 30\.00 mm", reasons), reasons
    assert "correction (target minus couch pose at imaging): confirmation needed" in reasons
    assert not rig.call("confirm", proposal_id=prop["id"])["ok"]
    assert [k for k in _kinds_since(rig, t0) if k in ("TARGET", "GO")] == []


def test_a_couch_moved_since_its_recorded_imaging_is_refused_at_propose(rig: Rig) -> None:
    here = _here(rig)
    uid = f"IMG-{time.monotonic_ns()}"
    rig.ok("record_imaging", imaging_session_uid=uid)
    _set_couch_pose(rig, Pose(here.lat, here.long + 6.0, here.vert))  # jogged, or by hand
    prop = rig.propose_to(Pose(here.lat + 3.0, here.long, here.vert), here, claim=False, uid=uid)
    assert prop["verdict"] == "refused", prop
    assert any(re.match(r"couch moved since imaging: long \+(5\.9\d|6\.0\d) mm .*limit 0\.50 mm",
                        r) for r in prop["reasons"]), prop["reasons"]


def test_a_couch_moved_by_hand_after_confirmation_is_refused_before_go(rig: Rig) -> None:
    """Nothing told igrtd of the push: the pose the controller's TARGET_ECHO carries
    (sampled when the TARGET arrived) is checked before GO; the armed target is
    cleared by a STOP and the confirmation is spent."""
    here = _here(rig)
    prop = rig.propose_to(Pose(here.lat + 3.0, here.long, here.vert), here)
    assert prop["verdict"] == "needs_confirmation", prop
    rig.confirm(prop)
    _set_couch_pose(rig, Pose(here.lat, here.long, here.vert - 4.0))  # pushed by hand
    _plc_vouched(rig)
    t0 = time.monotonic()
    reply = rig.call("hold", proposal_id=prop["id"])
    assert not reply["ok"]
    assert re.search(r"couch moved since imaging: vert -(3\.9\d|4\.0\d) mm .*limit 0\.50 mm",
                     reply["error"]), reply
    time.sleep(0.05)
    assert _kinds_since(rig, t0) == ["TARGET", "STOP"], "no GO; the armed target is cleared"
    assert rig.status()["state"] == "PROPOSED"


def test_a_couch_known_to_have_moved_since_imaging_is_refused_before_anything_is_sent(
        rig: Rig) -> None:
    here = _here(rig)
    prop = rig.propose_to(Pose(here.lat + 3.0, here.long, here.vert), here)
    assert prop["verdict"] == "needs_confirmation", prop
    rig.confirm(prop)
    _set_couch_pose(rig, Pose(here.lat, here.long, here.vert - 4.0))  # pushed by hand
    # igrtd reads the couch (a new image recorded), so it knows of the push
    rig.ok("record_imaging", imaging_session_uid=f"IMG-{time.monotonic_ns()}")
    t0 = time.monotonic()
    reply = rig.call("hold", proposal_id=prop["id"])
    assert not reply["ok"]
    assert "couch moved since imaging" in reply["error"], reply
    time.sleep(0.05)
    assert _kinds_since(rig, t0) == [], "nothing may be sent to the couch"
    assert rig.status()["state"] == "CONFIRMED"


def test_an_interrupted_move_resumed_from_part_of_the_way_still_reaches_its_target(
        rig: Rig) -> None:
    """The couch is then no longer at the imaging pose, but on the path igrtd moved it
    along under this same correction: a fresh confirmation may finish the move."""
    here = _here(rig)
    target = Pose(here.lat + 4.5, here.long, here.vert)
    prop = rig.propose_to(target, here)
    rig.confirm(prop)
    holder = rig.hold(prop["id"])
    rig.wait_until(lambda s: s["state"] == "MOVING")
    _wait_lat(rig, here.lat + 1.5)
    rig.ok("stop", reason="test: interrupt")
    holder.stop()
    assert _halted(rig)
    rig.wait_until(lambda s: s["state"] == "STOPPED")
    part = rig.couch_pose()
    assert here.lat + 1.0 < part.lat < target.lat - 0.5, part
    rig.ok("reset")
    rig.wait_until(lambda s: s["state"] == "PROPOSED")
    rig.confirm(prop)
    holder = rig.hold(prop["id"])
    st = rig.wait_until(lambda s: s["state"] in ("DONE", "STOPPED", "FAULT"))
    holder.stop()
    assert st["state"] == "DONE", st["reason"]


# ------------------------------------------------- item 4: uncommanded motion


def test_a_runaway_with_nothing_commanded_is_stopped_audited_and_latched(rig: Rig) -> None:
    assert rig.status()["state"] == "READY"
    t0 = _runaway(rig, "lat", 10.0)
    st = rig.wait_until(lambda s: s["state"] == "FAULT", timeout=2.0)
    stop_at = _first(rig, "STOP", t0)
    assert stop_at is not None and stop_at - t0 < 0.05, "STOP late or missing"
    assert _halted(rig)
    assert "uncommanded couch motion (lat)" in st["reason"]
    faults = _faults(rig, "uncommanded motion")
    assert len(faults) == 1, [f.details for f in faults]
    assert set(faults[0].details["pose"]) == {"lat", "long", "vert", "yaw", "pitch", "roll"}
    assert faults[0].details["moving_axes"] == ["lat"]
    assert faults[0].details["room_state"] == "READY"
    time.sleep(0.2)
    assert rig.status()["state"] == "FAULT", "a runaway latches until reset"
    here = _here(rig)
    assert not rig.call("propose", matrix=np.eye(4).tolist(), iso=list(ISO),
                        patient_position="HFS", couch_at_imaging=here.as_dict(),
                        binding={"patient_id": PATIENT, "plan_uid": PLAN,
                                 "frame_of_reference_uid": FOR, "imaging_session_uid": "I-1",
                                 "acquired_at": time.time()})["ok"]
    rig.sim(lambda couch, plc: couch.clear_injections())
    assert rig.ok("reset")["state"] == "READY"


def test_a_runaway_reported_only_by_moving_axes_of_a_faulted_controller_is_caught(
        rig: Rig) -> None:
    """The controller is in FAULT (not MOVING) yet reports an axis moving. Its FAULT
    at rest has latched the room already; the runaway is caught as one all the same."""
    rig.sim(lambda couch, plc: couch.force_fault("internal"))
    rig.ok("status")
    st = rig.wait_until(lambda s: s["state"] == "FAULT", timeout=2.0)
    assert "couch controller fault internal" in st["reason"]
    _here(rig)
    t0 = _runaway(rig, "vert", -12.0)
    assert _wait_first(rig, "STOP", t0, timeout=2.0) is not None
    assert _halted(rig)
    deadline = time.monotonic() + 2.0
    while not _faults(rig, "uncommanded motion") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_faults(rig, "uncommanded motion")) == 1


def test_a_runaway_after_confirmation_before_any_go_faults_and_spends_it(rig: Rig) -> None:
    here = _here(rig)
    prop = rig.propose_to(Pose(here.lat + 3.0, here.long, here.vert), here)
    rig.confirm(prop)
    t0 = _runaway(rig, "long", -8.0)
    rig.wait_until(lambda s: s["state"] == "FAULT", timeout=2.0)
    # The STOP goes out on the couch wire, the state on the socket: either may be
    # seen first by this test.
    assert _wait_first(rig, "STOP", t0, timeout=2.0) is not None
    assert _halted(rig)
    assert _faults(rig, "uncommanded motion")[0].details["room_state"] == "CONFIRMED"
    rig.sim(lambda couch, plc: couch.clear_injections())
    rig.ok("reset")
    st = rig.wait_until(lambda s: s["state"] in ("READY", "PROPOSED"))
    assert st["proposal"] is None or st["proposal"]["confirmation"] is None
    reply = rig.call("hold", proposal_id=prop["id"])
    assert not (reply.get("result") or {}).get("running")
    time.sleep(0.05)
    assert _first(rig, "GO", t0) is None, "the spent confirmation moved the couch"


def test_the_moves_confirmations_start_are_not_taken_for_a_runaway(rig: Rig) -> None:
    """The controller reports MOVING for a GO just written, before it ACKs it."""
    for shift in (3.0, -3.0, 2.0):
        here = _here(rig)
        prop = rig.propose_to(Pose(here.lat + shift, here.long, here.vert), here)
        rig.confirm(prop)
        holder = rig.hold(prop["id"])
        st = rig.wait_until(lambda s: s["state"] in ("DONE", "STOPPED", "FAULT"))
        holder.stop()
        assert st["state"] == "DONE", st["reason"]
    assert _faults(rig, "uncommanded motion") == []


# ------------------------------------------------- item 5: position plausibility


def _wait_lat(rig: Rig, lat: float, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while rig.couch_pose().lat < lat:
        assert time.monotonic() < deadline, "the couch never got there"
        time.sleep(0.002)


def _moving(rig: Rig, shift: float) -> tuple[Pose, Pose, Any]:
    here = _here(rig)
    target = Pose(here.lat + shift, here.long, here.vert)
    prop = rig.propose_to(target, here)
    rig.confirm(prop)
    holder = rig.hold(prop["id"])
    rig.wait_until(lambda s: s["state"] == "MOVING")
    _wait_lat(rig, here.lat + 2.0)
    return here, target, holder


def test_a_reported_50_mm_jump_away_from_the_path_mid_move_stops_and_faults(rig: Rig) -> None:
    here, target, holder = _moving(rig, 20.0)
    t0 = _pose_jump(rig, "lat", -50.0)
    st = rig.wait_until(lambda s: s["state"] in ("FAULT", "DONE", "STOPPED"), timeout=3.0)
    holder.stop()
    assert st["state"] == "FAULT", st["reason"]
    assert "implausible couch position during motion" in st["reason"]
    stop_at = _first(rig, "STOP", t0)
    assert stop_at is not None and stop_at - t0 < 0.1
    assert _halted(rig)
    assert rig.couch_pose().lat < target.lat - 5.0, "the move ran to its end"
    f = _faults(rig, "implausible position")
    assert len(f) == 1 and any("outside the commanded path" in d for d in f[0].details["details"])
    assert f[0].details["pose"]["lat"] < here.lat - 30.0


def test_a_reported_jump_along_the_path_faster_than_the_couch_can_move_faults(rig: Rig) -> None:
    """+8 mm in one status period, still between start and target: only the speed rule
    sees it (the couch model's 25 mm/s x ~20 ms + 1 mm margin is far below 8 mm)."""
    _, _, holder = _moving(rig, 20.0)
    _pose_jump(rig, "lat", 8.0)
    st = rig.wait_until(lambda s: s["state"] in ("FAULT", "DONE", "STOPPED"), timeout=3.0)
    holder.stop()
    assert st["state"] == "FAULT", st["reason"]
    assert "more than the maximum speed 25 mm/s allows" in st["reason"]
    assert "outside the commanded path" not in st["reason"]
    assert _halted(rig)


def test_another_axis_running_away_during_a_move_stops_and_faults(rig: Rig) -> None:
    here, _, holder = _moving(rig, 20.0)
    _runaway(rig, "vert", 20.0)
    st = rig.wait_until(lambda s: s["state"] in ("FAULT", "DONE", "STOPPED"), timeout=3.0)
    holder.stop()
    assert st["state"] == "FAULT", st["reason"]
    assert "vert" in st["reason"] and "outside the commanded path" in st["reason"]
    assert _halted(rig)
    assert abs(rig.couch_pose().vert - here.vert) < 3.0


def test_a_runaway_while_a_stop_winds_down_is_caught_as_one(rig: Rig) -> None:
    """The controller reports MOVING after it reported STOPPING for igrtd's STOP:
    nothing was commanded since, although igrtd never saw the couch at rest."""
    _, _, holder = _moving(rig, 20.0)
    holder.stop()  # hold-to-run released: igrtd STOPs the move
    _wait_couch(rig, lambda couch: couch.state == "STOPPING")
    # A few controller milliseconds after the first STOPPING report (pushed as the
    # controller entered STOPPING, so before the state reads STOPPING here): reports
    # stamped with the same uptime cannot be ordered, so a MOVING in that report's
    # millisecond is stopped again rather than taken for a runaway. Later STOPPING
    # pushes of the wind-down may share the runaway's millisecond: igrtd orders the
    # runaway against the first one.
    time.sleep(0.005)
    t0 = _runaway(rig, "long", 15.0)
    st = rig.wait_until(lambda s: s["state"] == "FAULT", timeout=2.0)
    # lat may still be winding down from the move when the runaway is reported.
    assert re.search(r"uncommanded couch motion \((lat, )?long\)", st["reason"]), st["reason"]
    # igrtd writes STOP before it latches FAULT, but FAULT read on igrtd's socket
    # does not mean the simulator (another thread, behind the pty) has acted on
    # the STOP yet: wait for its record rather than read it once.
    assert _wait_first(rig, "STOP", t0) is not None, "no STOP after the runaway"
    assert _halted(rig)
    time.sleep(0.1)  # any second report of the same runaway would be audited by now
    assert len(_faults(rig, "uncommanded motion")) == 1
    assert rig.status()["state"] == "FAULT"


def test_a_faulted_controller_still_moving_when_the_line_is_back_is_stopped_again(
        rig: Rig) -> None:
    """The line is cut mid-move; the couch's own watchdog faults it, then an axis runs
    away while the controller is in FAULT. igrtd cannot tell this from its move
    winding down, but motion in FAULT is never left alone: STOP once the line is back."""
    _, _, holder = _moving(rig, 20.0)
    rig.sim(lambda couch, plc: couch.silence_link(0.5))
    _wait_couch(rig, lambda couch: couch.state == "FAULT" and not couch.is_moving)
    t0 = _runaway(rig, "vert", 10.0)
    back = t0 + 0.5
    assert _halted(rig, timeout=1.5)
    stop_at = _first(rig, "STOP", t0)
    holder.stop()
    assert stop_at is not None and stop_at - back < 0.1, "no STOP once the line was back"


def _wait_couch(rig: Rig, pred: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not rig.sim(lambda couch, plc: pred(couch)):
        assert time.monotonic() < deadline, "the couch never got there"
        time.sleep(0.001)


# ------------------------------------------------------------------ helpers


def _runaway(rig: Rig, axis: str, speed: float) -> float:
    def go(couch: Any, plc: Any) -> float:
        t = time.monotonic()
        couch.inject_runaway(axis, speed)
        return t

    return float(rig.sim(go))


def _pose_jump(rig: Rig, axis: str, delta: float) -> float:
    def go(couch: Any, plc: Any) -> float:
        t = time.monotonic()
        couch.inject_pose_jump(axis, delta)
        return t

    return float(rig.sim(go))
