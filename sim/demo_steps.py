"""The steps of the simulated fraction that every demo mode shares: the demo
patient and plan, igrtctl as a subprocess, opening the session, recording an
imaging session, proposing and running the couch move, writing the registration.

sim/demo.py (3d, 2d) and sim/demo_modes.py (4d, monitor) both import these, so
neither imports the other's helpers (no import cycle: tests/test_import_cycles.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sim.room import SimRoom

TOL_MM, TOL_DEG = 0.5, 0.2
POSITION = "HFS"
PATIENT, PLAN, FOR = "DEMO-0001", "1.2.826.0.1.3680043.10.1234.1", "1.2.826.0.1.3680043.10.1234.2"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, text: str) -> None:
    say(f"\n== {n}. {text}")


def igrtctl(*args: str, user: str, socket: Path, capture: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "daemon.igrtctl", "--socket", str(socket), "--user", user, *args]
    say("   $ igrtctl --user " + user + " " + " ".join(args))
    return subprocess.run(cmd, text=True, capture_output=capture, timeout=120, check=False)


def open_session(sock: Path, iso: tuple[float, float, float]) -> None:
    if igrtctl("session", "open", "--patient", PATIENT, "--plan", PLAN,
               "--frame-of-reference", FOR, "--iso", ",".join(map(str, iso)),
               "--patient-position", POSITION,
               "--manual-override", "simulated room: no planning system", user="alice", socket=sock,
               capture=True).returncode:
        raise RuntimeError("session open refused")


def wait_until(what: Callable[[], Any], timeout_s: float, doing: str,
               period_s: float = 0.2) -> Any:
    """The first truthy value of `what()`, polled every `period_s`; TimeoutError naming
    `doing` when none comes within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(period_s)
    raise TimeoutError(f"{doing}: nothing after {timeout_s:.0f} s")


def monitor_start(sock: Path, marker_mm: Sequence[float], target_mm: Sequence[float]) -> None:
    """Beam on: `igrtctl monitor start` for one marker and the target (room frame, mm)."""
    marker = ",".join(f"{v:g}" for v in marker_mm)
    target = ",".join(f"{v:g}" for v in target_mm)
    if igrtctl("monitor", "start", "--marker", marker, "--target", target, user="alice",
               socket=sock, capture=True).returncode:
        raise RuntimeError("igrtd refused monitor start")


def record_imaging(sock: Path) -> str:
    """A new imaging session: igrtd records the couch pose at acquisition."""
    uid = "1.2.826.0.1.3680043.10.1234." + str(uuid.uuid4().int)[:20]
    if igrtctl("imaging", uid, user="alice", socket=sock, capture=True).returncode:
        raise RuntimeError("imaging session refused")
    return uid


def propose_and_move(room: SimRoom, sock: Path, reg_path: Path, imaging_uid: str,
                     iso: tuple[float, float, float], report: dict[str, Any]) -> None:
    """Propose from the registration, confirm (and approve), hold to run the move."""
    prop = igrtctl("propose", str(reg_path), "--iso", ",".join(map(str, iso)),
                   "--patient-position", POSITION, "--plan", PLAN,
                   "--imaging-session", imaging_uid, "--acquired-at", str(time.time()),
                   "--json", user="alice", socket=sock, capture=True)
    if prop.returncode != 0:
        say(prop.stdout + prop.stderr)
        raise RuntimeError("proposal refused")
    confirm_and_move(room, sock, json.loads(prop.stdout), report)


def confirm_and_move(room: SimRoom, sock: Path, proposal: dict[str, Any],
                     report: dict[str, Any]) -> None:
    """Confirm a proposal (and approve it where its tier needs), hold to run the move."""
    pid = proposal["id"]
    report["proposal"] = {k: proposal[k] for k in ("id", "target", "delta", "verdict", "reasons")}
    say(f"   proposal {pid}: verdict {proposal['verdict']}")
    for r in proposal["reasons"]:
        say(f"     - {r}")
    d = proposal["delta"]
    say("   correction: " + ", ".join(f"{k} {v:+.2f}" for k, v in d.items()))
    if proposal["verdict"] == "within_tolerance":
        say("   within tolerance: no move")
        return
    igrtctl("confirm", pid, "--no-hold", user="alice", socket=sock)
    if proposal["verdict"] == "needs_second_approval":
        if igrtctl("approve", pid, user="bob", socket=sock, capture=True).returncode:
            raise RuntimeError("second approval refused")
        say("   second approval given by bob (approver)")
    say("   therapist presses the motion-enable pendant (PLC input) and holds to run:")
    room.call(lambda: room.plc.press_motion_enable())
    try:
        moved = igrtctl("hold", pid, user="alice", socket=sock)
    finally:
        room.call(lambda: room.plc.release_motion_enable())
    if moved.returncode:
        raise RuntimeError("move did not complete")


def write_registration(out: Path, matrix: np.ndarray, imaging_uid: str) -> Path:
    try:
        from imaging.dicom_reg import write_registration
    except ImportError:
        write_registration = None  # type: ignore[assignment]
    if write_registration is not None:
        path = out / "registration.dcm"
        write_registration(path, matrix, patient_id=PATIENT, patient_name="DEMO^PATIENT",
                           fixed_frame_of_reference_uid=FOR,
                           moving_frame_of_reference_uid=imaging_uid)
        return path
    path = out / "registration.json"
    path.write_text(json.dumps({"matrix": np.asarray(matrix).tolist(), "patient_id": PATIENT,
                                "frame_of_reference_uid": FOR}))
    return path
