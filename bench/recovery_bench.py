"""Recovery figures: how long igrtd takes to come back, stopped, after kill -9
in the middle of a couch move (issue 7 target: recovery_to_ready_s <= 2).

Each run: start igrtd against the simulated couch, open a session, confirm a
~4 mm correction, hold to run, SIGKILL igrtd while the couch moves, start it
again and time it until it answers `status` in STANDBY with the couch at
rest. That start-up includes everything a crash costs: Python start, audit
log recovery, store, couch link, reconciliation (interrupted move marked,
controller's heartbeat fault cleared).

    recovery_to_ready_p50_s / _max_s   restart after the kill -> STANDBY answered
    daemon_start_p50_s                 clean first start -> STANDBY answered
    couch_stopped_after_kill_p50_ms    kill -> couch at rest (controller watchdog)
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from daemon.control import ControlClient
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import SimRoom
from sim.world import PatientWorld

REPO = Path(__file__).resolve().parents[1]
RUNS = 5
ISO = (8.0, -12.0, 20.0)
ERROR = Pose(3.0, 2.0, -2.0, 0.0, 0.0, 0.0)  # 4.1 mm: one confirmation, ~0.5 s move


def _pivot() -> tuple[float, float, float]:
    p = CouchModel.default().pivot
    return (float(p[0]), float(p[1]), float(p[2]))


def _launch(config: dict[str, Any], state: Path, log: Path) -> subprocess.Popen[bytes]:
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "room.json"
    cfg.write_text(json.dumps(config))
    (state / "igrtd.sock").unlink(missing_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.main", "--config", str(cfg)], cwd=REPO,
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _until_standby(proc: subprocess.Popen[bytes], sock: Path, room: SimRoom,
                   timeout: float = 30.0) -> float:
    """Seconds from now until igrtd answers status STANDBY and the couch is at rest."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"igrtd exited with {proc.returncode} during start-up")
        if sock.exists():
            try:
                with ControlClient(sock, "alice", timeout_s=5.0) as c:
                    while time.monotonic() < deadline:
                        st = c.call("status")["result"]["state"]
                        if st == "STANDBY" and not room.call(lambda: room.couch.is_moving):
                            return time.perf_counter() - t0
                        time.sleep(0.002)
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # socket file there, server not yet accepting
        time.sleep(0.002)
    raise TimeoutError("igrtd did not reach STANDBY")


def _move_and_kill(proc: subprocess.Popen[bytes], sock: Path, room: SimRoom) -> float:
    """Start a move, SIGKILL igrtd mid-move; ms until the couch is at rest."""
    world = PatientWorld.with_setup_error(ISO, "HFS", _pivot(), ERROR)
    matrix = np.asarray(world.true_registration(Pose())).tolist()
    with ControlClient(sock, "alice") as c:
        assert c.call("open_session", patient_id="P", plan_uid="PL", frame_of_reference_uid="F",
                      iso=list(ISO), patient_position="HFS",
                      manual_override="simulated room: no planning system")["ok"]
        reply = c.call("propose", matrix=matrix, iso=list(ISO), patient_position="HFS",
                       binding={"patient_id": "P", "plan_uid": "PL",
                                "frame_of_reference_uid": "F",
                                "imaging_session_uid": f"I-{time.monotonic_ns()}",
                                "acquired_at": time.time()})
        pid = reply["result"]["id"]
        assert c.call("confirm", proposal_id=pid)["ok"]
        first = c.call("hold", proposal_id=pid)
        assert first["ok"] and first["result"]["running"], first
        stop = threading.Event()

        def hold() -> None:
            with ControlClient(sock, "alice") as h:
                while not stop.is_set():
                    try:
                        h.call("hold", proposal_id=pid)
                    except (OSError, ValueError):
                        return
                    time.sleep(0.05)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        time.sleep(0.15)
        if not room.call(lambda: room.couch.is_moving):
            raise RuntimeError("couch not moving at the kill point; the bench needs a longer move")
        proc.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        proc.wait(10)
        stop.set()
    while room.call(lambda: room.couch.is_moving):
        time.sleep(0.002)
    stopped_ms = (time.perf_counter() - killed) * 1000
    t.join(2)
    return stopped_ms


def run() -> dict[str, float]:
    starts: list[float] = []
    recoveries: list[float] = []
    stopped: list[float] = []
    with tempfile.TemporaryDirectory(prefix="igrt-recovery-", dir=REPO / "bench") as tmp, \
            SimRoom(couch_kwargs={"seed": 11}) as room:
        for i in range(RUNS):
            state = Path(tmp) / f"run{i}"
            config = room.room_config(state)
            sock = state / "igrtd.sock"
            log = Path(tmp) / f"igrtd{i}.log"
            proc = _launch(config, state, log)
            try:
                starts.append(_until_standby(proc, sock, room))
                stopped.append(_move_and_kill(proc, sock, room))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            proc = _launch(config, state, log)
            try:
                recoveries.append(_until_standby(proc, sock, room))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    return {
        "recovery_to_ready_s": statistics.median(recoveries),
        "recovery_to_ready_p50_s": statistics.median(recoveries),
        "recovery_to_ready_max_s": max(recoveries),
        "daemon_start_s": statistics.median(starts),
        "daemon_start_p50_s": statistics.median(starts),
        "daemon_start_max_s": max(starts),
        "couch_stopped_after_kill_p50_ms": statistics.median(stopped),
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v:.3f}")
