"""The rooms a browser test (or the console bench, bench/console_browser_bench.py)
drives: one Mosquitto with a websockets listener, simulated rooms on it (one
igrtd each) and the console web server (igrt-console, optionally with its /mqtt
bridge). The page helpers that speak the DOM contract are in console_page.py.

    stack = RoomsProcess(run_dir, [description("tr1"), description("tr2")], ["tess", "phil"])
    info = stack.start()                 # broker (ws_url, creds) and every room's info
    stack.sim("tr1", "pendant", pressed=True)
    stack.broker("stop"); stack.broker("start")
    server = ConsoleServer(run_dir, info["broker"]["ws_url"], bridge=None); server.start()

Each room runs in a child process of its own (this file run as a script, on the
test's broker): the test process, busy with Playwright and its garbage
collector, cannot stall the simulated PLC and couch (a stale PLC heartbeat is an
open interlock to igrtd), the same reason sim/room_process.py gives. A room stops
when its stdin closes or on SIGTERM, and dies with its parent
(sim/parent_death.py). The broker is the test's (sim/broker.py), so the test
stops and starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
LISTENING = re.compile(r"igrt-console listening on (http://\S+/)")

# People at the consoles. Their broker account, igrt user name and console id are the
# same (contract: "A person may log in with their own account").
THERAPIST, PHYSICIST, NEWCOMER = "tess", "phil", "nina"
BROWSER_USERS = [
    {"name": THERAPIST, "role": "therapist", "identity": "demo_key"},
    {"name": PHYSICIST, "role": "approver", "identity": "demo_key"},
]


def description(room: str, *, seed: int = 1, speed_scale: float = 1.0,
                consoles: Iterable[str] = (THERAPIST, PHYSICIST, NEWCOMER),
                users: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A room description (sim/rooms/default.json) for browser persons: the default
    patient, whose set-up error (6, 4, -3 mm: a 7.8 mm shift) is past the 5 mm
    second-approval tier and below the 30 mm refusal (safety/policy.py defaults)."""
    from sim.room_description import DEFAULT_ROOM

    d: dict[str, Any] = json.loads(DEFAULT_ROOM.read_text())
    d["room"] = room
    d["seed"] = seed
    d["couch"]["speed_scale"] = speed_scale
    d["broker"] = {"enabled": True, "consoles": list(consoles)}
    d["users"] = users if users is not None else [
        {"name": "alice", "role": "therapist", "identity": "this_os_account"}, *BROWSER_USERS]
    return d


# ====================================================================== child side
class BrokerRef:
    """The parent's running Mosquitto as a room in another process sees it: what
    SimulatedRoom(broker=...) reads of a shared broker (address, accounts), never
    started or stopped here."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self.host, self.port, self.ws_port = ref["host"], int(ref["port"]), int(ref["ws_port"])
        self.creds: dict[str, str] = dict(ref["creds"])
        self.pid: int | None = ref.get("pid")
        self.running = True

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"


def _child_main(spec_path: str) -> int:
    """One room on the parent's broker; its info on stdout as one JSON line; runs
    until SIGTERM or stdin closes."""
    from sim.room import raise_priority
    from sim.room_description import RoomDescription
    from sim.stack import SimulatedRoom

    # The simulated couch and PLC stand for machines of their own: like igrtd (and the
    # campaign's devices, tests/campaign/devices.py) they run ahead of the browser and of
    # whatever else the machine runs, where this user may (root, as CI runs).
    raise_priority(0)
    spec = json.loads(Path(spec_path).read_text())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        def stdin_readable() -> None:
            if not sys.stdin.readline():  # closed: the parent is done with this room
                done.set()

        loop.add_reader(sys.stdin.fileno(), stdin_readable)
        room = SimulatedRoom(RoomDescription.model_validate(spec["description"]),
                             Path(spec["run_dir"]), broker=BrokerRef(spec["broker"]))  # type: ignore[arg-type]
        async with room:
            print(json.dumps(room.info()), flush=True)
            await done.wait()

    asyncio.run(main())
    return 0


# ===================================================================== parent side
class RoomsProcess:
    """A Mosquitto (websockets listener) in this process's care and one child process
    per simulated room on it: start(), sim(), broker(), stop().

    One process per room, not one for all: a sim op's work (acquire_cbct writes a CBCT
    in a thread of the room's process) starves that process's event loop of the GIL,
    and two rooms' devices in one loop then miss their deadlines (the couch's heartbeat
    watchdog trips: FAULT heartbeat_lost)."""

    def __init__(self, run_dir: Path, rooms: list[dict[str, Any]],
                 broker_users: Iterable[str]) -> None:
        self.run_dir = Path(run_dir)
        self.rooms = rooms
        self.broker_users = list(broker_users)
        self.mosquitto: Any = None  # sim.broker.Mosquitto
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._stderr: dict[str, IO[bytes]] = {}
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        from sim.broker import Mosquitto
        from sim.parent_death import die_with_parent

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mosquitto = Mosquitto(self.run_dir / "broker", ["igrtd", *self.broker_users])
        self.mosquitto.start()
        m = self.mosquitto
        ref = {"host": m.host, "port": m.port, "ws_port": m.ws_port, "creds": dict(m.creds),
               "pid": m.pid}
        self.info = {"broker": {**ref, "ws_url": m.ws_url}, "rooms": {}}
        try:
            for d in self.rooms:
                room = d["room"]
                spec = self.run_dir / f"{room}-spec.json"
                spec.write_text(json.dumps({"description": d, "broker": ref,
                                            "run_dir": str(self.run_dir / room)}))
                self._stderr[room] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
                self.procs[room] = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), str(spec)], cwd=REPO,
                    text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=self._stderr[room],
                    preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl, see sim/parent_death.py
            for room, proc in self.procs.items():
                assert proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
                line = proc.stdout.readline() if ready else ""
                if not line:
                    raise RuntimeError(f"room {room} did not come up: {self.stderr_tail(room)}")
                self.info["rooms"][room] = json.loads(line)
        except BaseException:
            self.stop()
            raise
        return self.info

    def stderr_tail(self, room: str, max_chars: int = 3000) -> str:
        f = self._stderr.get(room)
        if f is None or f.closed:
            return ""
        f.seek(0)
        return f.read().decode(errors="replace")[-max_chars:]

    def broker(self, action: str) -> None:
        """`stop` (killed: the broker vanishes), `start` (same ports, same accounts)."""
        if action == "stop":
            self.mosquitto.stop()
        elif action == "start":
            self.mosquitto.start()
        else:
            raise ValueError(action)

    def room(self, room: str) -> dict[str, Any]:
        info: dict[str, Any] = self.info["rooms"][room]
        return info

    def sim(self, room: str, op: str, **args: Any) -> dict[str, Any]:
        """A sim control op (sim/control_ops.py) on `room`; its result."""
        from sim.control_server import call

        reply = call(Path(self.room(room)["control_socket"]), op, args)
        if not reply.get("ok"):
            raise RuntimeError(f"sim {op} on {room}: {reply.get('error')}")
        result: dict[str, Any] = reply.get("result", reply)
        return result

    def couch_commands(self, room: str, since: float = 0.0,
                       kind: str | None = None) -> list[dict[str, Any]]:
        """Commands the simulated couch executed since `since` (time.monotonic())."""
        rec = self.sim(room, "record", device="couch", since=since)
        return [c for c in rec["commands"] if kind is None or c["kind"] == kind]

    def igrtd(self, room: str, cmd: str, user: str = "alice", **args: Any) -> dict[str, Any]:
        """igrtd's local socket (alice: this OS account; others sign with their demo key)."""
        from daemon.control import ControlClient

        info = self.room(room)
        key = None if user == "alice" else Path(info["key_dir"]) / f"{user}.key"
        with ControlClient(Path(info["igrtd"]["socket"]), user, key=key) as c:
            reply: dict[str, Any] = dict(c.call(cmd, **args))
        return reply

    def stop(self, timeout_s: float = 30.0) -> None:
        procs, self.procs = self.procs, {}
        for proc in procs.values():  # stdin closed: each room stops (all at once)
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        for f in self._stderr.values():
            f.close()
        self._stderr = {}
        if self.mosquitto is not None:
            self.mosquitto.terminate()
            self.mosquitto = None


class ConsoleServer:
    """`python -m daemon.console_web --config FILE` on a free port.

    The page logs in to Mosquitto's own WebSockets listener (`broker_url`): commands,
    replies, state and hold-to-run take that path, as in production. With `bridge` (the
    broker's plain MQTT address) igrt-console also serves its /mqtt bridge, which the
    page uses for the review images only (config.json `review_url`): Mosquitto 2.0's
    WebSockets listener delivers large messages at ~40 KB/s (docs/console.md)."""

    def __init__(self, run_dir: Path, broker_url: str, rooms: list[str] | None = None,
                 bridge: tuple[str, int] | None = None) -> None:
        self.config = Path(run_dir) / "console.json"
        cfg: dict[str, Any] = {"rooms": rooms, "listen": {"host": "127.0.0.1", "port": 0},
                               "broker_url": broker_url}
        if bridge is not None:
            cfg["mqtt_bridge"] = {"host": bridge[0], "port": bridge[1]}
        self.config.write_text(json.dumps(cfg))
        self.broker_url = broker_url
        self.log = Path(run_dir) / "console-web.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 20.0) -> str:
        from sim.parent_death import die_with_parent

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.console_web", "--config", str(self.config)],
                cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=log,
                preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                m = LISTENING.search(line)
                if m:
                    self.url = m.group(1)
                    return self.url
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"igrt-console did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        from sim.parent_death import stop_child

        stop_child(proc)  # type: ignore[arg-type]
        if proc.stdout is not None:
            proc.stdout.close()


BROWSER_NICE = 10
_BROWSER_COMMS = ("chrom", "node", "playwright")


def lower_browser_priority(nice: int = BROWSER_NICE) -> int:
    """Run the browser (and Playwright's driver) behind the simulated devices and igrtd:
    every thread of every descendant process of this one named chrom*/node gets niceness
    `nice` (raising niceness needs no privilege). Renderers forked later inherit it from
    chromium's zygote. Screenshots and page loads then cannot starve the simulated PLC,
    whose heartbeat igrtd requires within 100 ms during a move. Threads changed."""
    children: dict[int, list[int]] = {}
    comms: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        comms[int(entry.name)] = comm
    changed = 0
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if not comms.get(pid, "").lower().startswith(_BROWSER_COMMS):
            continue
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    if os.getpriority(os.PRIO_PROCESS, int(task.name)) < nice:
                        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                        changed += 1
    return changed


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright for Python is not installed (make setup)"
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install chromium; make setup)"
    return None


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
