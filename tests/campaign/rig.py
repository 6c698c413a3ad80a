"""A simulated room with igrtd as a child process, driven fast for campaigns and
benchmarks: faults injected on the simulator's side of the real wires (pty,
Modbus TCP), each injection timestamped on the simulator's clock.

Everything the invariant checker reads comes from the device side: the couch
simulator's `executed_commands` and `motion_log`, the PLC simulator's
`input_changes`, and this rig's own record of what it injected (`Injection`)
and of what the console asked for (`ConsoleRecord`). The test process and the
simulators share one `time.monotonic()` clock; igrtd's clock is never used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from daemon.control import ControlClient
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

ISO = (8.0, -12.0, 20.0)
PATIENT, PLAN, FOR = "PAT-C", "PLAN-C", "FOR-C"
PIVOT = tuple(CouchModel.default().pivot)

# Faster than the default couch: a 2-4 mm move lasts ~60-80 ms, 20-30 mm ~0.2 s.
SPEED_SCALE = 8.0
COUCH_HEARTBEAT_TIMEOUT_MS = 150  # the controller's own watchdog (default 250)
# igrtd's timing in the rig. Production defaults except the hold-to-run
# timeout, shortened so that heartbeat-loss scenarios stay short.
HOLD_TIMEOUT_S = 0.15
HOLD_PERIOD_S = 0.02
PLC_STALE_S = 0.1  # PlcConfig.heartbeat_stale_s default
PLC_POLL_S = 0.003  # PlcConfig.poll_interval_s default
PLC_RECONNECT_MIN_S = 0.05  # RoomPlcClient reconnect back-off, first step
TERMINAL = ("DONE", "STOPPED", "FAULT")


@dataclass(frozen=True)
class Injection:
    """A fault injected (or cleared) on the simulator's loop, at `t` (monotonic)."""

    t: float
    kind: str
    value: Any = None
    scenario: int = -1


@dataclass
class ConsoleRecord:
    """What the console did, timestamped on the same clock as the simulators."""

    confirms: list[tuple[float, float, int]] = field(default_factory=list)  # sent, answered, scen.
    holds_sent: list[float] = field(default_factory=list)
    hold_stops: list[tuple[float, int]] = field(default_factory=list)  # last hold sent, scenario


class Holder:
    """A console holding hold-to-run: `hold` every HOLD_PERIOD_S on its own connection."""

    def __init__(self, sock: Path, user: str, pid: str, record: ConsoleRecord,
                 period_s: float = HOLD_PERIOD_S) -> None:
        self.client = ControlClient(sock, user)
        self.pid = pid
        self.period = period_s
        self.record = record
        self.last_sent = 0.0
        self.replies: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="holder")

    def start(self) -> Holder:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.last_sent = time.monotonic()
            self.record.holds_sent.append(self.last_sent)
            try:
                self.replies.append(self.client.call("hold", proposal_id=self.pid))
            except OSError:
                return
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
            elif self._stop.wait(delay):
                return

    def stop(self) -> float:
        """Stop sending (the finger leaves the button, no release); returns the last send."""
        self._stop.set()
        self._thread.join(2)
        self.client.close()
        return self.last_sent


class Rig:
    """SimRoom (couch + PLC) and igrtd; use as a context manager."""

    def __init__(self, workdir: Path, *, daemon_overrides: dict[str, Any] | None = None,
                 couch_kwargs: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.room = SimRoom(with_plc=True, couch_kwargs={
            "speed_scale": SPEED_SCALE, "seed": 11,
            "heartbeat_timeout_ms": COUCH_HEARTBEAT_TIMEOUT_MS, **(couch_kwargs or {})})
        self._overrides = daemon_overrides or {}
        self.daemon: DaemonProcess | None = None
        self.ctl: ControlClient | None = None
        self.injections: list[Injection] = []
        self.console = ConsoleRecord()
        self.scenario = -1

    # ----------------------------------------------------------------- life
    def __enter__(self) -> Self:
        self.room.start()
        state = self.workdir / "state"
        cfg = self.room.room_config(state)
        cfg["motion"] = {"hold_timeout_s": HOLD_TIMEOUT_S}
        # Long moves (20-30 mm) need no second approval in the rig: the campaign
        # is about supervision, not about the approval tiers.
        cfg["policy"] = {"second_approval_shift_mm": 40.0, "refuse_shift_mm": 50.0}
        cfg.update(self._overrides)
        self.daemon = DaemonProcess(cfg, state, self.workdir / "igrtd.log").start()
        self.ctl = ControlClient(self.daemon.socket_path, "alice")
        return self

    def __exit__(self, *_: object) -> None:
        if self.ctl is not None:
            self.ctl.close()
        if self.daemon is not None:
            self.daemon.stop()
        self.room.stop()

    @property
    def pid(self) -> int:
        assert self.daemon is not None and self.daemon.proc is not None
        return self.daemon.proc.pid

    # ------------------------------------------------------------- control
    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.ctl is not None
        return self.ctl.call(cmd, **args)

    def ok(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = self.call(cmd, **args)
        if not reply["ok"]:
            raise AssertionError(f"{cmd} refused: {reply}")
        return reply["result"]

    def status(self) -> dict[str, Any]:
        return self.ok("status")

    def wait_until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
                   poll_s: float = 0.005) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon never reached the expected state; last: "
                                     f"{st['state']} ({st['reason']}), {st['interlocks']}")
            time.sleep(poll_s)

    def open_session(self) -> None:
        self.ok("open_session", patient_id=PATIENT, plan_uid=PLAN, frame_of_reference_uid=FOR,
                iso=list(ISO), patient_position="HFS")

    def propose_to(self, target: Pose, at_imaging: Pose) -> dict[str, Any]:
        """Propose the correction a perfect registration finds when `target` is right."""
        world = PatientWorld.with_setup_error(ISO, "HFS", PIVOT, target)  # type: ignore[arg-type]
        matrix = np.asarray(world.true_registration(at_imaging)).tolist()
        return self.ok("propose", matrix=matrix, iso=list(ISO), patient_position="HFS",
                       couch_at_imaging=at_imaging.as_dict(),
                       binding={"patient_id": PATIENT, "plan_uid": PLAN,
                                "frame_of_reference_uid": FOR,
                                "imaging_session_uid": f"IMG-{time.monotonic_ns()}",
                                "acquired_at": time.time()})

    def confirm(self, pid: str) -> dict[str, Any]:
        sent = time.monotonic()
        result = self.ok("confirm", proposal_id=pid)
        self.console.confirms.append((sent, time.monotonic(), self.scenario))
        return result

    def hold(self, pid: str) -> Holder:
        assert self.daemon is not None
        return Holder(self.daemon.socket_path, "alice", pid, self.console).start()

    # ------------------------------------------------------------ simulators
    def sim(self, fn: Callable[[Any, Any], Any]) -> Any:
        """fn(couch, plc) on the simulator loop (where its timestamps are taken)."""
        return self.room.call(lambda: fn(self.room.couch, self.room.plc))

    def inject(self, kind: str, value: Any = None) -> float:
        """Apply one named fault (or its clearing) on the simulator loop; returns its time."""
        action = ACTIONS[kind]

        def apply(couch: Any, plc: Any) -> float:
            t = time.monotonic()
            result = action(couch, plc, value)
            # A drop records how many connections it closed: none while igrtd is
            # between connections (still backing off after an earlier drop).
            self.injections.append(Injection(t, kind, value if result is None else result,
                                             self.scenario))
            return t

        return float(self.sim(apply))

    def couch_moving(self) -> bool:
        return bool(self.room.call(lambda: self.room.couch.is_moving))

    def couch_pose(self) -> Pose:
        return self.room.couch_pose

    def restore_room(self) -> None:
        """Every fault cleared, every input safe, hold-to-run pressed."""
        def fix(couch: Any, plc: Any) -> None:
            t = time.monotonic()
            couch.clear_injections()
            plc.resume_heartbeat()
            plc.set_response_delay(0.0)
            for name in ("imager_kv_source_parked", "imager_detector_parked"):
                plc.release_input(name)
            for name in ("door_closed", "estop_chain_ok", "collision_pads_clear",
                         "motion_enable_pressed"):
                plc.set_input(name, True)
            self.injections.append(Injection(t, "restore", None, self.scenario))

        self.sim(fix)

    def ready_for_next(self, timeout: float = 5.0) -> dict[str, Any]:
        """Back to a room with a session, nothing proposed or latched, links up."""
        self.restore_room()
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            state = st["state"]
            links_ok = not st["interlocks"]["open"] and bool((st["couch"] or {}).get("link_ok"))
            idle = not self.couch_moving()
            if state in ("STOPPED", "FAULT") and links_ok and idle:
                self.call("reset")
            elif state in ("CONFIRMED", "AWAITING_APPROVAL", "MOVING", "VERIFYING"):
                self.call("stop", reason="campaign: between scenarios")
            elif state in ("READY", "PROPOSED", "DONE") and links_ok and idle:
                return st
            elif state == "STANDBY":
                self.open_session()
            if time.monotonic() > deadline:
                raise AssertionError(f"room did not settle between scenarios: {state} "
                                     f"({st['reason']}), interlocks {st['interlocks']}")
            time.sleep(0.003)


def _set(name: str) -> Callable[[Any, Any, Any], None]:
    return lambda couch, plc, closed: plc.set_input(name, bool(closed))


# Named faults: (couch, plc, value) -> None, run on the simulator loop.
ACTIONS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "door_closed": _set("door_closed"),
    "estop_chain_ok": _set("estop_chain_ok"),
    "collision_pads_clear": _set("collision_pads_clear"),
    "motion_enable_pressed": _set("motion_enable_pressed"),
    "imager_kv_source_parked": _set("imager_kv_source_parked"),
    "imager_detector_parked": _set("imager_detector_parked"),
    "plc_drop": lambda couch, plc, _: plc.drop_connections(),
    "plc_heartbeat_frozen": lambda couch, plc, frozen: plc.freeze_heartbeat(bool(frozen)),
    "plc_delay": lambda couch, plc, s: plc.set_response_delay(float(s)),
    "couch_silence": lambda couch, plc, s: couch.silence_link(float(s)),
    "couch_delay": lambda couch, plc, s: couch.delay_replies(float(s)),
}
