"""`igrt-sim up` as a real child process, and clients of its control socket and igrtd.

Rooms here leave the broker off unless a test needs it (one process fewer on
a small machine); the default room (broker on) is stood up by test_up_down.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.control import ControlClient
from sim.control_server import call
from sim.room_description import DEFAULT_ROOM

REPO = Path(__file__).resolve().parents[2]


def description(**changes: Any) -> dict[str, Any]:
    room: dict[str, Any] = json.loads(DEFAULT_ROOM.read_text())
    room.update(changes)
    return room


class SimUp:
    """`python -m sim.cli up ROOM --run-dir DIR --json`, stopped with SIGTERM."""

    def __init__(self, tmp: Path, room: dict[str, Any] | None = None) -> None:
        self.room_file = tmp / "room.json"
        self.room_file.write_text(json.dumps(room or description(broker={"enabled": False})))
        self.run_dir = tmp / "run"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim.cli", "up", str(self.room_file), "--run-dir",
             str(self.run_dir), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.info = self._read_info(timeout_s=60.0)

    def _read_info(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"igrt-sim up gave no info: {err[-2000:]}")
        info: dict[str, Any] = json.loads(line)
        return info

    @property
    def control(self) -> Path:
        return Path(self.info["control_socket"])

    @property
    def igrtd_socket(self) -> Path:
        return Path(self.info["igrtd"]["socket"])

    def ctl(self, op: str, **args: Any) -> dict[str, Any]:
        reply = call(self.control, op, args)
        assert reply["ok"], reply
        return reply

    def ctl_refused(self, op: str, **args: Any) -> str:
        reply = call(self.control, op, args)
        assert not reply["ok"], reply
        error: str = reply["error"]
        return error

    def igrtd(self, cmd: str, user: str = "alice", **args: Any) -> dict[str, Any]:
        key = None if user == "alice" else Path(self.info["key_dir"]) / f"{user}.key"
        with ControlClient(self.igrtd_socket, user, key=key) as c:
            reply = c.call(cmd, **args)
        assert reply["ok"], reply
        result: dict[str, Any] = reply["result"]
        return result

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(pred: Any, timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


@contextlib.contextmanager
def held(room: SimUp, proposal_id: str, user: str = "alice") -> Iterator[None]:
    """Hold-to-run as a console does it (a `hold` every 50 ms from another thread) for
    as long as the block runs."""
    stop = threading.Event()

    def hold() -> None:
        with ControlClient(room.igrtd_socket, user, key=None) as c:
            while not stop.is_set():
                c.call("hold", proposal_id=proposal_id)
                time.sleep(0.05)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join(5)


@pytest.fixture(scope="module")
def sim_room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimUp]:
    room = SimUp(tmp_path_factory.mktemp("simroom"))
    yield room
    room.stop()
