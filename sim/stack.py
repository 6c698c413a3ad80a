"""A whole simulated treatment room, stood up from a room description.

    async with SimulatedRoom(load_description(path), run_dir) as room:
        print(room.info())              # what a client needs to connect
        await run_op(room, "inject", {"fault": "estop"})

In one asyncio loop: the couch controller on a pty, the room PLC on a free
loopback port, Mosquitto (configured like production, own port), igrtd as a
child process with a configuration the simulator wrote into the run
directory, the simulated kV imaging system connected to igrtd's imager
socket, and the control API (sim/control_server.py) on a Unix socket in the
run directory. On exit everything stops in reverse order; igrtd and
Mosquitto are killed if they do not stop, so nothing is left running.

Several rooms may share one broker, as the rooms of a department do (the
browser console's department view):

    with running_mosquitto(tmp, ["igrtd", "console1", "alice"]) as broker:
        async with SimulatedRoom(d1, run1, broker=broker), \
                   SimulatedRoom(d2, run2, broker=broker):
            ...

A room given a running broker uses it (its igrtd logs in as `igrtd`; each
igrtd's MQTT client id is `igrtd-<room>`, so they do not displace each other)
and leaves it running on exit. The broker's password file is fixed when it
starts, so its creator gives it every account: `igrtd` and the description's
`broker.consoles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from daemon.control import KEY_DIR_ENV
from sim.broker import Mosquitto
from sim.control_ops import true_couch_pose
from sim.couch import SimCouchController
from sim.identities import demo_private_jwk, demo_public_jwk
from sim.intrafraction import COMPACT_PAIR
from sim.kv_stream import SimKvImager, views_config
from sim.patient_motion import PatientMotion
from sim.plc import SimRoomPlc
from sim.room import DaemonProcess
from sim.room_description import RoomDescription

MARKER = "igrt-sim.json"  # written first: the run directory is the simulator's own
# How often the kV imager's scene follows the patient's breathing and drift.
MOTION_PERIOD_S = 0.02


class SimulatedRoom:
    """Use as `async with`; `info()` while it runs. Not thread-safe: one loop."""

    def __init__(self, description: RoomDescription, run_dir: Path | None = None,
                 broker: Mosquitto | None = None) -> None:
        self.description = description
        self._shared_broker = broker
        self._run_dir_given = run_dir
        self.run_dir = Path(run_dir) if run_dir is not None else Path()
        self.couch: SimCouchController | None = None
        self.plc: SimRoomPlc | None = None
        self.broker: Mosquitto | None = None
        self.daemon: DaemonProcess | None = None
        self.kv: SimKvImager | None = None
        self.control: Any = None  # sim.control_server.ControlServer
        p = description.patient
        self.patient = PatientMotion(
            p.iso_mm, p.patient_position, p.setup_error.pose(),
            p.breathing.amplitude_mm, p.breathing.period_s, p.drift_mm_s)
        # Timers of timed injections (link losses): cancelled by `clear` and at exit.
        self.timers: list[asyncio.TimerHandle] = []
        self.started_at_wall = 0.0
        self.cache: dict[str, Any] = {}  # expensive things ops build once (phantom, plan CT)
        self._stack = contextlib.AsyncExitStack()
        self._running = False

    # ------------------------------------------------------------ paths
    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    @property
    def key_dir(self) -> Path:
        return self.run_dir / "keys"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def users_file(self) -> Path:
        """igrtd's `users_file`: empty at start; `igrtctl users add --registry` enrols."""
        return self.run_dir / "users.json"

    @property
    def running(self) -> bool:
        return self._running

    def created_by_simulator(self) -> bool:
        """The run directory carries the marker this room wrote when it started."""
        try:
            marker = json.loads((self.run_dir / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return bool(marker.get("pid") == os.getpid() and marker.get("room")
                    == self.description.room)

    # ------------------------------------------------------------ life
    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        d = self.description
        self._make_run_dir()
        self._write_keys()
        self.users_file.write_text('{"v": 1, "users": []}\n')
        self.couch = SimCouchController(initial_pose=d.couch.start_pose.pose(),
                                        speed_scale=d.couch.speed_scale,
                                        noise_mm=d.couch.noise_mm, seed=d.seed,
                                        baudrate=d.couch.link.baudrate)
        await self.couch.start()
        self._stack.push_async_callback(self.couch.stop)
        # The patient lies on the table top as it really is (sim/room_imperfections.py;
        # in a perfect room the controller's own pose).
        self.patient.place(true_couch_pose(self) or self.couch.pose, self.patient.setup_error)
        if d.plc:
            self.plc = SimRoomPlc()
            await self.plc.start()
            self._stack.push_async_callback(self.plc.stop)
        if self._shared_broker is not None:
            self.broker = self._use_shared_broker(self._shared_broker)
            _write_private(self.run_dir / "igrtd.mqtt.pw", self.broker.creds["igrtd"])
        elif d.broker.enabled:
            self.broker = Mosquitto(self.run_dir / "broker", ["igrtd", *d.broker.consoles])
            self._stack.callback(self.broker.terminate)  # first: a half-started one too
            await asyncio.to_thread(self.broker.start)
            _write_private(self.run_dir / "igrtd.mqtt.pw", self.broker.creds["igrtd"])
        self.daemon = DaemonProcess(self._igrtd_config(), self.state_dir,
                                    self.run_dir / "igrtd.log")
        self._stack.callback(self.daemon.stop)  # SIGTERM, then SIGKILL after 10 s
        await asyncio.to_thread(self.daemon.start)
        if d.kv_imager:
            self.kv = SimKvImager(self.state_dir / "kv.sock", COMPACT_PAIR, seed=d.seed)
            await self.kv.connect()
            self._stack.push_async_callback(self.kv.close)
            task = asyncio.create_task(self._follow_patient(), name="sim-room patient motion")
            self._stack.push_async_callback(_cancel, task)
        self._stack.callback(self._cancel_timers)
        from sim.control_server import ControlServer

        self.control = ControlServer(self, self.control_socket)
        await self.control.start()
        self._stack.push_async_callback(self.control.stop)
        self.started_at_wall = time.time()
        self._running = True
        _write_private(self.run_dir / "info.json", json.dumps(self.info(), indent=2))

    async def stop(self) -> None:
        self._running = False
        stack, self._stack = self._stack, contextlib.AsyncExitStack()
        await stack.aclose()

    async def reconnect_imager(self) -> None:
        """Bring the kV imaging system back after an injected failure."""
        if self.kv is not None and not self.kv.connected:
            await self.kv.connect()

    def _cancel_timers(self) -> None:
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()

    async def _follow_patient(self) -> None:
        while True:
            if self.kv is not None:
                self.kv.displacement = self.patient.displacement()
            await asyncio.sleep(MOTION_PERIOD_S)

    # ------------------------------------------------------------ set-up
    def _use_shared_broker(self, broker: Mosquitto) -> Mosquitto:
        """The caller's broker, checked: running, with this room's accounts. Not stopped
        by this room."""
        d = self.description
        if not d.broker.enabled:
            raise ValueError(f"room {d.room!r}: a broker is given but the description "
                             "has broker.enabled false")
        if not broker.running:
            raise ValueError(f"room {d.room!r}: the given broker is not running")
        missing = [u for u in ("igrtd", *d.broker.consoles) if u not in broker.creds]
        if missing:
            raise ValueError(f"room {d.room!r}: the given broker has no account for "
                             f"{', '.join(missing)} (create it with every room's accounts)")
        return broker

    def _make_run_dir(self) -> None:
        if self._run_dir_given is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="igrt-sim-"))
        else:
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if any(self.run_dir.iterdir()):
                # A used run dir holds another run's audit trail and sockets.
                raise ValueError(f"run directory {self.run_dir} is not empty; give a new one")
        self.run_dir.chmod(0o700)  # the control socket and keys live here
        self.run_dir = self.run_dir.resolve()
        marker = {"format": self.description.format, "room": self.description.room,
                  "pid": os.getpid(), "created": time.time()}
        _write_private(self.run_dir / MARKER, json.dumps(marker))

    def _write_keys(self) -> None:
        self.key_dir.mkdir(mode=0o700)
        for u in self.description.users:
            if u.identity == "demo_key":
                _write_private(self.key_dir / f"{u.name}.key", json.dumps(demo_private_jwk(u.name)))

    def _igrtd_config(self) -> dict[str, Any]:
        d = self.description
        assert self.couch is not None
        users: list[dict[str, Any]] = []
        for u in d.users:
            entry: dict[str, Any] = {"name": u.name, "role": u.role}
            if u.identity == "this_os_account":
                entry["local_uid"] = os.getuid()
            else:
                entry["public_key"] = demo_public_jwk(u.name)
            users.append(entry)
        cfg: dict[str, Any] = {
            "room": d.room,
            "state_dir": str(self.state_dir),
            # link.baudrate included: igrtd's line speed is the simulator's.
            "couch": {"port": self.couch.device_path, **d.couch.link.model_dump()},
            "users": users,
            "users_file": str(self.users_file),
            # igrtd's daily-QA gate is on in a real room; off here unless the description asks.
            "qa": {"gate": d.qa_gate},
        }
        if self.plc is not None:
            cfg["plc"] = {"host": self.plc.host, "port": self.plc.port,
                          "heartbeat_stale_s": d.plc_heartbeat_stale_s}
        if self.broker is not None:
            cfg["mqtt"] = {"host": self.broker.host, "port": self.broker.port,
                           "username": "igrtd",
                           "password_file": str(self.run_dir / "igrtd.mqtt.pw")}
        if d.record:
            cfg["record"] = {"path": str(self.run_dir / "recording.jsonl")}
        if d.kv_imager:
            cfg["monitoring"] = {"views": views_config(COMPACT_PAIR)}
        return cfg

    # ------------------------------------------------------------ what clients need
    def info(self) -> dict[str, Any]:
        d = self.description
        daemon = self.daemon
        users = [{"name": u.name, "role": u.role, "identity": u.identity,
                  "key": str(self.key_dir / f"{u.name}.key") if u.identity == "demo_key"
                  else None} for u in d.users]
        broker = None
        shared = self._shared_broker is not None
        if self.broker is not None:
            # This room's accounts only (a shared broker holds other rooms' and people's too).
            accounts = ("igrtd", *d.broker.consoles)
            broker = {"host": self.broker.host, "port": self.broker.port,
                      "ws_url": self.broker.ws_url, "shared": shared,
                      "topic_prefix": f"igrt/{d.room}/",
                      "passwords": {u: pw for u, pw in self.broker.creds.items()
                                    if u in accounts}}
        return {
            "room": d.room,
            "run_dir": str(self.run_dir),
            "control_socket": str(self.control_socket),
            "igrtd": None if daemon is None else {
                "socket": str(daemon.socket_path), "config": str(daemon.config_path),
                "users_file": str(self.users_file),
                "log": str(daemon.log_path),
                "pid": daemon.proc.pid if daemon.proc is not None else None},
            "audit_dir": str(self.state_dir / "audit"),
            "couch": {"device": self.couch.device_path if self.couch else None},
            "plc": None if self.plc is None else {"host": self.plc.host, "port": self.plc.port},
            "broker": broker,
            "kv_imager": None if not d.kv_imager else {"socket": str(self.state_dir / "kv.sock")},
            "users": users,
            "key_dir": str(self.key_dir),
            "key_dir_env": KEY_DIR_ENV,
            "pids": {"igrt_sim": os.getpid(),
                     "igrtd": daemon.proc.pid if daemon and daemon.proc else None,
                     # A shared broker is not this room's process.
                     "mosquitto": self.broker.pid if self.broker and not shared else None},
        }


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _write_private(path: Path, text: str) -> None:
    """A file only this user can read (passwords, keys, the info with passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
