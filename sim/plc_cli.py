"""The simulated room PLC standalone, for service engineers: `python -m sim.plc`.

`python -m sim.plc [--port N] [--host H] [--cycle-ms MS] [--arm-travel-s S]`
starts a `SimRoomPlc` (sim/plc.py), prints `host:port` and accepts commands on
stdin (`help` lists them) until `quit`; with stdin closed or not a pipe it
serves until killed. `python -m sim.plc_cli` is the same.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from drivers.event_loop import precise_event_loop
from drivers.plc import ARMS
from sim.plc import SimRoomPlc

_HELP = """commands:
  status                      show inputs, coils, arms, heartbeat, fault code
  set NAME 0|1                set an input (arm bits: force a stuck sensor)
  release NAME                stop forcing an arm sensor
  press | release-enable      hold / let go of the motion-enable control
  fault N                     set the PLC fault code (0 clears)
  raw ADDR VALUE|-            force status register ADDR to a raw value (- releases it)
  gantry DEG [DEG_PER_S]      put the gantry at DEG now, or turn it there at that speed
  freeze | thaw               stop / restart the heartbeat counter
  drop                        close all host connections
  refuse 0|1                  refuse new host connections
  delay SECONDS               delay every answer
  exceptions 0|1              answer every request with a Modbus exception
  quit"""


def _status_text(plc: SimRoomPlc) -> str:
    ins = " ".join(f"{n}={int(v)}" for n, v in plc.inputs().items())
    outs = " ".join(f"{n}={int(v)}" for n, v in plc.coils().items())
    arms = " ".join(f"{a}={plc.arm_position_pct(a):.1f}%" for a in ARMS)
    raw = " ".join(f"{a}={v}" for a, v in sorted(plc.raw_registers().items()))
    return (f"inputs: {ins}\ncoils: {outs}\narms: {arms}\n"
            f"gantry: {plc.gantry.angle_deg():.2f} deg (target {plc.gantry.target_deg:.2f})\n"
            f"heartbeat={plc.heartbeat} fault_code={plc.fault_code}"
            + (f"\nforced registers: {raw}" if raw else ""))


def _command(plc: SimRoomPlc, line: str) -> str | None:
    """Run one console command; returns text to show, or None to quit."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    try:
        if cmd == "quit":
            return None
        if cmd == "help":
            return _HELP
        if cmd == "status":
            return _status_text(plc)
        if cmd == "set" and len(args) == 2:
            plc.set_input(args[0], args[1] == "1")
        elif cmd == "release" and len(args) == 1:
            plc.release_input(args[0])
        elif cmd == "press":
            plc.press_motion_enable()
        elif cmd == "release-enable":
            plc.release_motion_enable()
        elif cmd == "fault" and len(args) == 1:
            plc.set_fault_code(int(args[0]))
        elif cmd == "raw" and len(args) == 2:
            plc.set_raw_register(int(args[0]), None if args[1] == "-" else int(args[1], 0))
        elif cmd == "gantry" and len(args) == 1:
            plc.gantry.set_angle(float(args[0]))
        elif cmd == "gantry" and len(args) == 2:
            return f"turning, {plc.gantry.rotate_to(float(args[0]), float(args[1])):.1f} s"
        elif cmd == "freeze":
            plc.freeze_heartbeat()
        elif cmd == "thaw":
            plc.resume_heartbeat()
        elif cmd == "drop":
            return f"dropped {plc.drop_connections()} connection(s)"
        elif cmd == "refuse" and len(args) == 1:
            plc.refuse_connections(args[0] == "1")
        elif cmd == "delay" and len(args) == 1:
            plc.set_response_delay(float(args[0]))
        elif cmd == "exceptions" and len(args) == 1:
            plc.exception_responses(args[0] == "1")
        else:
            return f"error: unknown command {line.strip()!r} (try 'help')"
    except ValueError as exc:
        return f"error: {exc}"
    return "ok"


async def _serve(args: argparse.Namespace) -> int:
    plc = SimRoomPlc(args.host, args.port, cycle_s=args.cycle_ms / 1000.0,
                     arm_travel_s=args.arm_travel_s)
    try:
        await plc.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(plc.endpoint, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        interactive = True
    except (OSError, ValueError):
        interactive = False  # stdin not a pipe/tty (e.g. /dev/null): serve only
    try:
        while True:
            if not interactive:
                await asyncio.sleep(3600)
                continue
            line = await reader.readline()
            if not line:  # EOF: keep serving until killed
                interactive = False
                continue
            reply = _command(plc, line.decode(errors="replace"))
            if reply is None:
                return 0
            if reply:
                print(reply, flush=True)
    finally:
        await plc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.plc",
                                     description="Simulated room safety PLC (Modbus TCP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020, help="0 picks a free port")
    parser.add_argument("--cycle-ms", type=float, default=10.0)
    parser.add_argument("--arm-travel-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.exit(2, f"error: --port {args.port} is out of range 0..65535\n")
    if not 1.0 <= args.cycle_ms <= 1000.0:
        parser.exit(2, f"error: --cycle-ms {args.cycle_ms} is out of range 1..1000 ms\n")
    if args.arm_travel_s <= 0:
        parser.exit(2, f"error: --arm-travel-s {args.arm_travel_s} must be > 0 s\n")
    try:
        with asyncio.Runner(loop_factory=precise_event_loop) as runner:
            return runner.run(_serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
