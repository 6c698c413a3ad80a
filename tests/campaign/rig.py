"""A simulated room with igrtd as a child process, driven fast for campaigns and
benchmarks: faults injected on the simulator's side of the real wires (pty,
Modbus TCP), each injection timestamped on the simulator's clock.

Everything the invariant checker reads comes from the device side: the couch
simulator's `executed_commands` and `motion_log`, the PLC simulator's
`input_changes`, and this rig's own record of what it injected (`Injection`)
and of what the console asked for (`ConsoleRecord`: confirmations, second
approvals, proposals with the couch's true pose at imaging). The couch and the
PLC simulators run in a process each (tests/campaign/devices.py): they stand for
two machines, and a STOP on the couch line must not queue behind the Modbus
reads of igrtd's PLC poll. Both share the test process's `time.monotonic()`
clock (CLOCK_MONOTONIC, one clock per machine); igrtd's clock is never used.
igrtd's own word is read for two things only, because the requirement is about
them: the room state once a scenario settled (a runaway must *latch* FAULT) and
its `fault` audit records (it must be audited).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from daemon.config import BindingConfig, MotionConfig, PlcConfig
from daemon.control import ControlClient
from daemon.igrtctl.room_cli import HOLD_RATE_HZ
from safety.couch_model import CouchModel
from safety.policy import VerdictPolicy
from safety.pose import Pose
from sim.couch import DEFAULT_MAX_VELOCITY
from sim.room import DaemonProcess, room_config
from sim.world import PatientWorld

from .devices import DeviceProcess
from .faults import ACTIONS, FAULTS, UNAVAILABLE

__all__ = ["ACTIONS", "FAULTS", "UNAVAILABLE", "Rig"]

ISO = (8.0, -12.0, 20.0)
PATIENT, PLAN, FOR = "PAT-C", "PLAN-C", "FOR-C"
PIVOT = tuple(CouchModel.default().pivot)

# The one shortening: the simulated couch runs 4x faster than the default model
# (a 3 mm move lasts ~0.14 s, 30 mm on one axis ~0.5 s), so that 1,000 scenarios
# fit in `make test`. Every time limit igrtd and the devices apply is the shipped
# default: the bounds the invariants check are in time, not in distance.
SPEED_SCALE = 4.0
COUCH_HEARTBEAT_TIMEOUT_MS = 250  # the controller's own watchdog, its default
# igrtd's timing and policy in the rig: the shipped defaults (nothing overridden).
HOLD_TIMEOUT_S = MotionConfig().hold_timeout_s  # 0.25 s
HOLD_PERIOD_S = 1.0 / HOLD_RATE_HZ  # igrtctl's hold-to-run rate (20 Hz)
PLC_STALE_S = PlcConfig().heartbeat_stale_s  # 0.1 s
PLC_POLL_S = PlcConfig().poll_interval_s  # 0.003 s
PLC_RECONNECT_MIN_S = 0.05  # RoomPlcClient reconnect back-off, first step
POLICY = VerdictPolicy()  # second approval above 5 mm / 2 deg, refused above 30 mm / 5 deg
MAX_REGISTRATION_AGE_S = BindingConfig().max_registration_age_s  # 1800 s
STATUS_PUSH_S = 0.02  # the couch controller pushes STATUS every 20 ms while moving
CONFIRMER, APPROVER = "alice", "bob"
TERMINAL = ("DONE", "STOPPED", "FAULT")


@dataclass(frozen=True)
class Injection:
    """A fault injected (or cleared) on the simulator's loop, at `t` (monotonic)."""

    t: float
    kind: str
    value: Any = None
    scenario: int = -1


@dataclass(frozen=True)
class ProposalRecord:
    """A correction the console proposed, with the device-side truth at imaging."""

    t: float  # answered (monotonic)
    scenario: int
    proposal_id: str
    pose_at_imaging: Pose  # the couch simulator's own pose when the proposal was made
    claimed_at_imaging: Pose  # what the request said
    verdict: str
    acquired_at: float  # wall clock of the registration's acquisition


@dataclass(frozen=True)
class Observation:
    """The room state seen once a scenario (or a phase of it) settled."""

    t: float
    scenario: int
    state: str
    reason: str


@dataclass
class ConsoleRecord:
    """What the console did, timestamped on the same clock as the simulators."""

    # sent, answered, scenario, user
    confirms: list[tuple[float, float, int, str]] = field(default_factory=list)
    approvals: list[tuple[float, float, int, str]] = field(default_factory=list)
    holds_sent: list[float] = field(default_factory=list)
    hold_stops: list[tuple[float, int]] = field(default_factory=list)  # last hold sent, scenario
    proposals: list[ProposalRecord] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)


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
    """The simulated couch and PLC (each in its own process: tests/campaign/devices.py)
    and igrtd; use as a context manager."""

    def __init__(self, workdir: Path, *, daemon_overrides: dict[str, Any] | None = None,
                 couch_kwargs: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.devices = DeviceProcess({
            "speed_scale": SPEED_SCALE, "seed": 11,
            "heartbeat_timeout_ms": COUCH_HEARTBEAT_TIMEOUT_MS, **(couch_kwargs or {})})
        self._overrides = daemon_overrides or {}
        self.daemon: DaemonProcess | None = None
        self.ctl: ControlClient | None = None
        self.approver: ControlClient | None = None
        self.injections: list[Injection] = []
        self.console = ConsoleRecord()
        self.scenario = -1

    # ----------------------------------------------------------------- life
    def __enter__(self) -> Self:
        self.devices.start()
        state = self.workdir / "state"
        cfg = room_config(state, self.devices.couch_port, self.devices.plc_port,
                          couch_baudrate=self.devices.couch_baudrate)
        # No "motion" or "policy" section: igrtd runs its shipped defaults, with the
        # second-approval tier on (a second authenticated person approves). The
        # couch model is the default one with this couch's commissioned speeds (the
        # simulator's, scaled), which position plausibility uses.
        model = json.loads(json.dumps(CouchModel.default().model_dump(mode="json")))
        model["max_speed"] = {a: v * SPEED_SCALE for a, v in DEFAULT_MAX_VELOCITY.items()}
        cfg["couch_model"] = model
        for key, value in self._overrides.items():  # a section's keys are merged into it
            base = cfg.get(key)
            cfg[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) \
                else value
        self.daemon = DaemonProcess(cfg, state, self.workdir / "igrtd.log").start()
        self.ctl = ControlClient(self.daemon.socket_path, CONFIRMER)
        self.approver = ControlClient(self.daemon.socket_path, APPROVER)
        return self

    def __exit__(self, *_: object) -> None:
        for client in (self.ctl, self.approver):
            if client is not None:
                client.close()
        if self.daemon is not None:
            self.daemon.stop()
        self.devices.stop()

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
                iso=list(ISO), patient_position="HFS", manual_override="typed for the test room")

    def propose_to(self, target: Pose, at_imaging: Pose, *, age_s: float = 0.0,
                   true_pose: Pose | None = None) -> dict[str, Any]:
        """Propose the correction a perfect registration finds when `target` is right
        and the couch was at `at_imaging` (the couch's real pose: `true_pose`)."""
        result = self.try_propose_to(target, at_imaging, age_s=age_s, true_pose=true_pose)
        if result is None:
            raise AssertionError(f"propose refused: {self.status()['reason']}")
        return result

    def try_propose_to(self, target: Pose, at_imaging: Pose, *, age_s: float = 0.0,
                       true_pose: Pose | None = None) -> dict[str, Any] | None:
        """`propose_to`; None if igrtd refused (the room latched FAULT meanwhile, say:
        a controller fault read as the line came back)."""
        world = PatientWorld.with_setup_error(ISO, "HFS", PIVOT, target)  # type: ignore[arg-type]
        matrix = np.asarray(world.true_registration(at_imaging)).tolist()
        acquired_at = time.time() - age_s
        reply = self.call("propose", matrix=matrix, iso=list(ISO), patient_position="HFS",
                         couch_at_imaging=at_imaging.as_dict(),
                         binding={"patient_id": PATIENT, "plan_uid": PLAN,
                                  "frame_of_reference_uid": FOR,
                                  "imaging_session_uid": f"IMG-{time.monotonic_ns()}",
                                  "acquired_at": acquired_at})
        if not reply["ok"]:
            return None
        result = dict(reply["result"])
        self.console.proposals.append(ProposalRecord(
            time.monotonic(), self.scenario, str(result.get("id")),
            at_imaging if true_pose is None else true_pose, at_imaging,
            str(result.get("verdict")), acquired_at))
        return result

    def confirm(self, pid: str) -> dict[str, Any]:
        reply = self.try_confirm(pid)
        if not reply["ok"]:
            raise AssertionError(f"confirm refused: {reply}")
        return dict(reply["result"])

    def try_confirm(self, pid: str) -> dict[str, Any]:
        """confirm as the therapist; recorded (as a confirmation) only when accepted."""
        sent = time.monotonic()
        reply = self.call("confirm", proposal_id=pid)
        if reply["ok"]:
            self.console.confirms.append((sent, time.monotonic(), self.scenario, CONFIRMER))
        return reply

    def try_approve(self, pid: str, *, as_confirmer: bool = False) -> dict[str, Any]:
        """The second approval, on the approver's own connection (or, to test the
        two-person rule, on the confirmer's); recorded when accepted."""
        client, user = (self.ctl, CONFIRMER) if as_confirmer else (self.approver, APPROVER)
        assert client is not None
        sent = time.monotonic()
        reply = client.call("approve", proposal_id=pid)
        if reply["ok"]:
            self.console.approvals.append((sent, time.monotonic(), self.scenario, user))
        return reply

    def observe(self) -> dict[str, Any]:
        """Record the room state now (for the latched-FAULT invariant)."""
        st = self.status()
        self.console.observations.append(Observation(time.monotonic(), self.scenario,
                                                     st["state"], str(st.get("reason"))))
        return st

    @property
    def audit_dir(self) -> Path:
        return self.workdir / "state" / "audit"

    def hold(self, pid: str) -> Holder:
        assert self.daemon is not None
        return Holder(self.daemon.socket_path, CONFIRMER, pid, self.console).start()

    # ------------------------------------------------------------ simulators
    def sim(self, op: str, *args: Any) -> Any:
        """One of the devices' operations (tests/campaign/devices.py OPS), run on the
        loop of the simulator that owns the device (both, for snapshot, collect and
        restore), where their timestamps are taken."""
        return self.devices.op(op, *args)

    def inject(self, kind: str, value: Any = None) -> float:
        """Apply one named fault (or its clearing) on the loop of the simulator whose
        device it touches; returns its time there."""
        t, result = self.sim("inject", kind, value)
        # A drop records how many connections it closed: none while igrtd is
        # between connections (still backing off after an earlier drop).
        self.injections.append(Injection(t, kind, value if result is None else result,
                                         self.scenario))
        return float(t)

    def couch_moving(self) -> bool:
        return bool(self.sim("moving"))

    def couch_pose(self) -> Pose:
        pose: Pose = self.sim("pose")
        return pose

    def executed_since(self, t0: float, kind: str | None = None) -> list[tuple[float, str]]:
        """(t, kind) of the commands the couch executed from t0 on (of one kind)."""
        return list(self.sim("executed_since", t0, kind))

    def restore_room(self) -> None:
        """Every fault cleared, every input safe, hold-to-run pressed."""
        t = self.sim("restore")
        self.injections.append(Injection(t, "restore", None, self.scenario))

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
            elif (state in ("READY", "PROPOSED", "DONE") and links_ok and idle
                  # restored above; igrtd must have read it back before a move is asked for
                  and st["interlocks"].get("motion_enable_pressed") is not False):
                return st
            elif state == "STANDBY" and links_ok:
                # Not raising: the room may latch FAULT as it is asked (a controller
                # fault read as the link came back); the next round resets it.
                self.call("open_session", patient_id=PATIENT, plan_uid=PLAN,
                          frame_of_reference_uid=FOR, iso=list(ISO), patient_position="HFS",
                          manual_override="typed for the test room")
            if time.monotonic() > deadline:
                raise AssertionError(f"room did not settle between scenarios: {state} "
                                     f"({st['reason']}), interlocks {st['interlocks']}, "
                                     f"couch {st['couch']}, controller "
                                     f"{self.sim('controller_state')}")
            time.sleep(0.01)
