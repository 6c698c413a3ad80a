"""`make demo MODE=console`: two simulated treatment rooms and the browser console.

    python -m sim.demo --mode console [--out out/demo] [--seconds N]

What it starts, all on loopback:
 1. One Mosquitto (the project's configuration, with its WebSockets listener
    for browsers) shared by the department's two rooms, `tr1` and `tr2`, as
    one broker serves a real department.
 2. Each room as `igrt-sim up` builds it (sim/stack.py): the simulated couch on
    a pty, the room PLC over Modbus TCP, the kV imager, and its own igrtd.
 3. The console's static server (`igrt-console`, daemon/console_web), its
    own process as in production (systemd/igrt-console.service).
 4. In `tr1` the session is opened (as the therapist would from the plan) and
    a CBCT is acquired through the patient's true, mis-set-up pose; the demo
    prints where it is, for the therapist to register in the console.

Then it prints the console's address, the demo users with their broker
passwords and signing-key files, and waits for Ctrl-C (or `--seconds`). The
PLC's hold-to-run pendant is simulated as held, so the console's hold-to-run
button is the only thing the move waits for. The users' keys are demo keys
(sim/identities.py), never to be enrolled in a real room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sim.broker import Mosquitto
from sim.control_ops import run_op
from sim.demo_steps import FOR, PATIENT, PLAN, POSITION, say
from sim.room_description import DEFAULT_ROOM, RoomDescription, UserSpec, parse_description
from sim.stack import SimulatedRoom

ROOMS = ("tr1", "tr2")
USERS = (("alice", "therapist"), ("bob", "approver"), ("sam", "service"), ("vic", "viewer"))
CONSOLE_PORT = 8080  # the port a department would give the console; a free one if taken


def describe(room: str, seed: int) -> RoomDescription:
    """The default simulated room, renamed, with every demo user signing with a key and
    logging in to the broker with their own account (the browser's way)."""
    base = parse_description(DEFAULT_ROOM.read_text(), str(DEFAULT_ROOM))
    users = [UserSpec(name=n, role=r, identity="demo_key") for n, r in USERS]  # type: ignore[arg-type]
    return base.model_copy(update={
        "room": room, "seed": seed, "users": users,
        # Slower than a real couch: a mid-move STOP in the console is easy to try.
        "couch": base.couch.model_copy(update={"speed_scale": 0.5}),
        "broker": base.broker.model_copy(update={"consoles": [n for n, _ in USERS]}),
    })


def _console_config(out: Path, broker: Mosquitto, port: int) -> Path:
    path = out / "console.json"
    path.write_text(json.dumps({
        "listen": {"host": "127.0.0.1", "port": port}, "broker_url": broker.ws_url,
        # Review images through the console's bridge to the broker's TCP listener
        # (Mosquitto 2.0's WebSockets listener takes ~30 s for them: docs/console.md).
        "mqtt_bridge": {"host": broker.host, "port": broker.port},
        "rooms": list(ROOMS)}, indent=2))
    return path


def _spawn_console_server(config: Path, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "daemon.console_web", "--config",
                                 str(config), "--quiet"], stdout=subprocess.PIPE, stderr=err,
                                text=True)


async def _start_console_server(config: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """The console's own process; its address from the line it prints once bound."""
    proc = _spawn_console_server(config, log)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the console server did not start: {log.read_text()[-500:]}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _prepare_first_room(room: SimulatedRoom) -> dict[str, Any]:
    """Session open and a CBCT acquired, as the morning's first patient would be."""
    env = {**os.environ, room.info()["key_dir_env"]: str(room.key_dir)}
    iso = ",".join(str(c) for c in room.description.patient.iso_mm)
    cmd = [sys.executable, "-m", "daemon.igrtctl", "--socket", str(room.daemon.socket_path),  # type: ignore[union-attr]
           "--user", "alice", "session", "open", "--patient", PATIENT, "--plan", PLAN,
           "--frame-of-reference", FOR, "--iso", iso, "--patient-position", POSITION,
           "--manual-override", "simulated room: no planning system"]
    done = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True,
                                   timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"session open refused: {(done.stdout + done.stderr).strip()}")
    await run_op(room, "pendant", {"pressed": True})
    return await run_op(room, "acquire_cbct", {"path": "daily_cbct.mha"})


def _banner(url: str, broker: Mosquitto, rooms: list[SimulatedRoom], cbct: dict[str, Any]) -> None:
    first = rooms[0]
    say(f"\nigrt console: {url}")
    say(f"  broker (WebSockets)  {broker.ws_url}")
    say("  users (log in with the name and password; import the key file once per browser):")
    for name, role in USERS:
        say(f"    {name:<6} {role:<10} password {broker.creds[name]}   key "
            f"{first.key_dir / (name + '.key')}")
    say(f"  rooms: {', '.join(r.description.room for r in rooms)} "
        f"(tr1 has a session open for patient {PATIENT})")
    say(f"  daily image to register in tr1: {cbct['path']}")
    say(f"  planning image:                 {cbct['planning_ct']}")
    say("  the PLC hold-to-run pendant is simulated as held. Ctrl-C ends the demo.")


async def _serve(out: Path, seed: int, seconds: float | None) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    accounts = ["igrtd", *(n for n, _ in USERS)]
    broker = Mosquitto(out / "broker", accounts)
    broker.start()
    server: subprocess.Popen[str] | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            rooms = []
            for i, name in enumerate(ROOMS):
                room = SimulatedRoom(describe(name, seed + i), out / name, broker=broker)
                rooms.append(await stack.enter_async_context(room))
            # Each room writes its demo keys (the same derived keys) into its own run dir.
            port = CONSOLE_PORT if _free(CONSOLE_PORT) else 0
            server, url = await _start_console_server(_console_config(out, broker, port),
                                                      out / "console.log")
            say("preparing tr1: session open, CBCT acquired (a few seconds)")
            cbct = await _prepare_first_room(rooms[0])
            (out / "console-demo.json").write_text(json.dumps(
                {"url": url, "ws_url": broker.ws_url, "rooms": list(ROOMS),
                 "users": {n: {"role": r, "password": broker.creds[n],
                               "key": str(rooms[0].key_dir / f"{n}.key")} for n, r in USERS},
                 "daily_image": cbct["path"], "planning_image": cbct["planning_ct"]}, indent=2))
            _banner(url, broker, rooms, cbct)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            say("\nstopping the demo")
            # Going down, the PLC simulator's server sees its client vanish mid-poll and
            # pymodbus logs the last frames as errors: noise at the end of a clean stop.
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
            if server.poll() is None:
                server.kill()
        broker.terminate()
    return 0


def run(out: Path, seed: int, seconds: float | None = None) -> int:
    return asyncio.run(_serve(out, seed, seconds))
