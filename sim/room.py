"""A simulated treatment room running beside igrtd: couch controller on a pty
and (optionally) the room PLC on a loopback Modbus TCP port, in a background
thread with its own event loop, so that a synchronous driver (the demo, a
benchmark, a test that shells out to igrtctl) can use them. `with_couch=False`
leaves the couch out: the fault campaign's rig runs the couch and the PLC as two
rooms in two processes, as they are two machines in a treatment room
(tests/campaign/devices.py).

igrtd itself runs as a separate process and talks to these devices over the
real wire protocols, exactly as in a treatment room.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self, TypeVar

from drivers.event_loop import precise_event_loop
from safety.pose import Pose
from sim.identities import demo_users, install_demo_keys
from sim.parent_death import die_with_parent

T = TypeVar("T")

# alice is this OS account (peer credentials); bob, sam and vic sign with demo
# keys (sim/identities.py): the local socket believes no name without a proof.
DEMO_USERS = demo_users()


class SimRoom:
    def __init__(self, *, with_plc: bool = False, couch_kwargs: dict[str, Any] | None = None,
                 plc_kwargs: dict[str, Any] | None = None, with_couch: bool = True) -> None:
        self._with_couch = with_couch
        self._with_plc = with_plc
        self._couch_kwargs = couch_kwargs or {}
        self._plc_kwargs = plc_kwargs or {}
        # Timers to the microsecond: the serial wire's deliveries, the PLC's cycle.
        self._loop = precise_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-room",
                                        daemon=True)
        self.couch: Any = None
        self.plc: Any = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the simulator's loop thread and return its result."""
        fut: Future[T] = Future()

        def _run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by fut.result()
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(_run)
        return fut.result(timeout=10)

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> Self:
        from sim.couch import SimCouchController

        self._thread.start()
        if self._with_couch:
            self.couch = SimCouchController(**self._couch_kwargs)
            self.run(self.couch.start())
        if self._with_plc:
            from sim.plc import SimRoomPlc

            self.plc = SimRoomPlc(**self._plc_kwargs)
            self.run(self.plc.start())
        return self

    def stop(self) -> None:
        if self.plc is not None:
            self.run(self.plc.stop())
        if self.couch is not None:
            self.run(self.couch.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def couch_pose(self) -> Pose:
        return self.call(lambda: self.couch.pose)

    def room_config(self, state_dir: Path, **overrides: Any) -> dict[str, Any]:
        return room_config(state_dir, self.couch.device_path,
                           None if self.plc is None else self.plc.port,
                           couch_baudrate=self.couch.baudrate, **overrides)


def room_config(state_dir: Path, couch_port: str, plc_port: int | None, *,
                couch_baudrate: int | None = None, qa_gate: bool = False,
                **overrides: Any) -> dict[str, Any]:
    """igrtd's configuration for a simulated room: its couch pty (and the simulated
    wire's speed), its PLC port (if any) and the demo users, whose signing keys this
    process installs. The daily-QA gate (igrtd's `qa.gate`, on by default in a real
    room) is off unless `qa_gate`: a simulated room has no daily QA to pass."""
    couch: dict[str, Any] = {"port": couch_port}
    if couch_baudrate is not None:
        # igrtd's line speed is the simulated wire's (None: an instant pty, where
        # any speed igrtd sets is as good as another).
        couch["baudrate"] = couch_baudrate
    cfg: dict[str, Any] = {
        "room": "demo",
        "state_dir": str(state_dir),
        "couch": couch,
        "users": DEMO_USERS,
        "qa": {"gate": qa_gate},
    }
    install_demo_keys()  # the signing demo users' private keys, for this process's clients
    if plc_port is not None:
        cfg["plc"] = {"host": "127.0.0.1", "port": plc_port}
    cfg.update(overrides)
    return cfg


# igrtd's scheduling priority in systemd/igrtd.service (Nice=): a console host's
# other work must not delay supervision. Test rooms run igrtd at the same priority
# where they may (as root, as CI runs); elsewhere at the caller's.
IGRTD_NICE = -10


def raise_priority(pid: int, nice: int = IGRTD_NICE) -> bool:
    """Give process `pid` the niceness `nice`; False where this user may not."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except PermissionError:
        return False
    return True


def _accepts(path: Path) -> bool:
    """Whether the socket at `path` takes connections: its file appears at bind(),
    a moment before listen(), and a client in between is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class DaemonProcess:
    """igrtd as a child process, the way systemd would run it (at its Nice=)."""

    def __init__(self, config: dict[str, Any], state_dir: Path, log_path: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.log_path = log_path
        self.config_path = state_dir / "room.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return Path(self.config.get("socket_path") or self.state_dir / "igrtd.sock")

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        if self.socket_path.exists():
            self.socket_path.unlink()
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.main", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # SIGTERM when the simulator dies, SIGKILL included: no orphaned igrtd.
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl, see sim/parent_death.py
            )
        raise_priority(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines() or [""]
                raise RuntimeError(f"igrtd exited with {self.proc.returncode} ({lines[-1][-300:]}); "
                                   f"see {self.log_path}")
            if self.socket_path.exists() and _accepts(self.socket_path):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"igrtd did not open {self.socket_path} within {timeout:.0f} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
