"""A simulated room (couch on a real pty) and igrtd as a real child process."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.control import FROM_ENVIRONMENT, ControlClient
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

ISO = (8.0, -12.0, 20.0)
PATIENT, PLAN, FOR = "PAT-1", "PLAN-1", "FOR-1"


@pytest.fixture(autouse=True, scope="module")
def _short_garbage_collections() -> Iterator[None]:
    """These tests run the simulated devices and the consoles in this process. A
    full garbage collection over everything the suite's earlier tests left in it
    can pause the process for longer than igrtd's 250 ms hold-to-run timeout (a
    CI run saw a move stopped for 'hold-to-run heartbeat lost' at its target):
    collect now, then keep what exists out of later collections."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """igrtd's state directory (audit log, store, sockets) of a test's room."""
    return tmp_path / "state"


@pytest.fixture
def room() -> Iterator[SimRoom]:
    # Faster axes than the demo keeps moves short; 3x still gives ~1 s moves to interrupt.
    with SimRoom(couch_kwargs={"speed_scale": 1.0, "seed": 3}) as r:
        yield r


@pytest.fixture
def daemon(room: SimRoom, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(room.room_config(tmp_path / "state"), tmp_path / "state",
                      tmp_path / "igrtd.log").start()
    yield d
    d.stop()


# A room with the PLC on Modbus TCP, and igrtd connected to both (interlock and
# imager-arm tests share them).
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


class Console:
    """A therapist's console on the local socket, with hold-to-run in a thread.

    Its proof of identity (docs/operations.md): `key` signs every command; by
    default the demo users' keys (sim/identities.py: bob, sam, vic) and, for
    alice, this OS account's uid, which the demo room config maps to her.
    """

    def __init__(self, sock: Path, user: str, key: Any = FROM_ENVIRONMENT) -> None:
        self.sock = sock
        self.user = user
        self.key = key
        self.c = ControlClient(sock, user, key=key)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self.c.call(cmd, **args)

    def ok(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = self.call(cmd, **args)
        assert reply["ok"], reply
        return reply["result"]

    def open_session(self) -> None:
        self.ok("open_session", patient_id=PATIENT, plan_uid=PLAN, frame_of_reference_uid=FOR,
                iso=list(ISO), patient_position="HFS", manual_override="typed for the test room")

    def propose(self, error: Pose, **binding: Any) -> dict[str, Any]:
        world = PatientWorld.with_setup_error(ISO, "HFS", tuple(CouchModel.default().pivot), error)
        matrix = np.asarray(world.true_registration(Pose())).tolist()
        b = {"patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
             "imaging_session_uid": f"IMG-{time.monotonic_ns()}", "acquired_at": time.time()}
        b.update(binding)
        return self.call("propose", matrix=matrix, iso=list(ISO), patient_position="HFS",
                         binding=b)

    def hold_in_background(self, pid: str, rate_hz: float = 20.0) -> Holder:
        return Holder(self.sock, self.user, pid, rate_hz, self.key).start()

    def wait_state(self, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.ok("status")
            if st["state"] in states:
                return st
            time.sleep(0.02)
        raise AssertionError(f"state {self.ok('status')['state']} never became {states}")


class Holder:
    def __init__(self, sock: Path, user: str, pid: str, rate_hz: float,
                 key: Any = FROM_ENVIRONMENT) -> None:
        self.client = ControlClient(sock, user, key=key)
        self.pid = pid
        self.period = 1.0 / rate_hz
        self.replies: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Holder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.replies.append(self.client.call("hold", proposal_id=self.pid))
            except OSError:
                return
            time.sleep(self.period)

    def stop(self) -> None:
        """Stop sending heartbeats (like a finger leaving the button, without release)."""
        self._stop.set()
        self._thread.join(2)

    def started(self) -> bool:
        return any(r.get("ok") and r["result"].get("running") for r in self.replies)


@pytest.fixture
def alice(daemon: DaemonProcess) -> Iterator[Console]:
    c = Console(daemon.socket_path, "alice")
    yield c
    c.c.close()


@pytest.fixture
def bob(daemon: DaemonProcess) -> Iterator[Console]:
    c = Console(daemon.socket_path, "bob")
    yield c
    c.c.close()


def executed(room: SimRoom, kind: str) -> list[Any]:
    return room.call(lambda: list(room.couch.executed(kind)))
