"""igrt-sim: stand up a whole simulated treatment room and drive its devices.

    igrt-sim up [ROOM.json] [--run-dir DIR] [--json]
    igrt-sim ctl OP [--arg KEY=VALUE ...] [--run-dir DIR | --socket PATH]
    igrt-sim run SCENARIO.json... [--junit OUT.xml] [--run-dir DIR]
    igrt-sim replay RECORDING.jsonl [--junit OUT.xml] [--json] [--work-dir DIR]

`up` runs until Ctrl-C or SIGTERM, then stops everything it started. `run`
runs scenario files, each in a fresh room, and prints a pass/fail table;
`replay` replays a recorded session against a fresh igrtd and reports where it
diverges (docs/record-replay.md).
Exit status: 0 done (every expectation held), 1 failed (one line on stderr;
for `run`, an expectation that did not hold), 2 refused input (a production
igrtd configuration, a bad room description or scenario, bad arguments).
docs/integration-testing.md is the guide, docs/sim-control-api.md the protocol,
docs/scenarios.md the scenario format.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from sim import replay_cli


class UsageError(ValueError):
    """Refused command-line input: exit status 2."""


def _fail(text: str, code: int) -> int:
    print(f"igrt-sim: {' '.join(text.split())}", file=sys.stderr)
    return code


# ------------------------------------------------------------------ up
def _text(info: dict[str, Any]) -> str:
    lines = [f"simulated room {info['room']!r} is up (run directory {info['run_dir']})",
             f"  igrtd socket     {info['igrtd']['socket']}  (pid {info['igrtd']['pid']})",
             f"  control socket   {info['control_socket']}",
             f"  audit            {info['audit_dir']}",
             f"  couch            {info['couch']['device']}"]
    if info["plc"]:
        lines.append(f"  room PLC         {info['plc']['host']}:{info['plc']['port']}")
    if info["broker"]:
        b = info["broker"]
        lines.append(f"  MQTT broker      {b['host']}:{b['port']} (topics {b['topic_prefix']}...)")
        lines.append(f"  MQTT WebSockets  {b['ws_url']} (browser console)")
        lines += [f"    password of {u:<10} {pw}" for u, pw in b["passwords"].items()]
    if info["kv_imager"]:
        lines.append(f"  kV imager        connected to {info['kv_imager']['socket']}")
    lines.append(f"  users (signing keys in {info['key_dir']}; export "
                 f"{info['key_dir_env']}={info['key_dir']}):")
    for u in info["users"]:
        how = "this OS account" if u["key"] is None else u["key"]
        lines.append(f"    {u['name']:<8} {u['role']:<10} {how}")
    lines.append(f"  info as JSON     {info['run_dir']}/info.json")
    lines.append(f"  drive it:        igrt-sim ctl truth --socket {info['control_socket']}")
    lines.append("Ctrl-C stops the room.")
    return "\n".join(lines)


async def _up(room_path: Path | None, run_dir: Path | None, as_json: bool) -> int:
    from daemon.main import IGRTD_SWITCH_INTERVAL_S
    from daemon.memory_lock import lock_memory
    from sim.room_description import load_description
    from sim.stack import SimulatedRoom

    description = load_description(room_path)  # ValueError: refused, exit 2
    # Its CBCT renders run in threads: they hand the interpreter back to the devices'
    # event loop within 0.5 ms instead of Python's 5 ms, as igrtd's do.
    sys.setswitchinterval(IGRTD_SWITCH_INTERVAL_S)
    # The simulated couch and PLC answer within their deadlines as real ones do: their
    # code is not read back from the disk mid-move either (daemon/memory_lock.py).
    lock_memory()  # where this user may; the simulator runs on either way
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimulatedRoom(description, run_dir) as room:
        info = room.info()
        print(json.dumps(info) if as_json else _text(info), flush=True)
        await stop.wait()
    if not as_json:
        print("simulated room stopped", flush=True)
    return 0


# ------------------------------------------------------------------ ctl
def _ctl(a: argparse.Namespace) -> int:
    # The one client of the control API is igrtctl's (`igrtctl sim` is the same
    # request); igrt-sim keeps its own exit statuses: 2 bad input, 1 otherwise.
    from daemon.igrtctl import exits
    from daemon.igrtctl.sim_control import parse_arg_pairs, request, socket_path

    try:
        args = parse_arg_pairs(a.arg or [])
        path = socket_path(a.socket, a.run_dir)
        reply = request(path, a.op, args, a.timeout)
    except exits.UsageError as exc:
        raise UsageError(str(exc)) from None
    except exits.Unreachable as exc:
        return _fail(str(exc), 1)
    if not reply.get("ok"):
        return _fail(str(reply.get("error", "refused")), 1)
    reply.pop("ok", None)
    print(json.dumps(reply, indent=None if a.compact else 2))
    return 0


# ------------------------------------------------------------------ run
def _run(paths: list[Path], junit: Path | None, run_dir: Path | None) -> int:
    from sim.scenario import load_scenario
    from sim.scenario_report import table, write_junit
    from sim.scenario_runner import run_files

    for path in paths:
        load_scenario(path)  # ValueError: a bad file is refused before any room starts
    if run_dir is not None and run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"--run-dir {run_dir} is not empty; give a new one")
    # A room's own shutdown (the couch watchdog firing after igrtd stops) is not news here.
    logging.getLogger("igrt.sim").setLevel(logging.ERROR)
    results = asyncio.run(run_files(paths, run_dir))
    print(table(results), flush=True)
    if junit is not None:
        write_junit(results, junit)
    return 0 if all(r.passed for r in results) else 1


# ------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="igrt-sim", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="stand a simulated room up and wait (Ctrl-C stops it)")
    up.add_argument("room", nargs="?", type=Path,
                    help="room description (default sim/rooms/default.json)")
    up.add_argument("--run-dir", type=Path, help="new or empty directory (default: a temp dir)")
    up.add_argument("--json", action="store_true", help="print the info as one JSON line")
    ctl = sub.add_parser("ctl", help="run one control operation (docs/sim-control-api.md)")
    ctl.add_argument("op")
    ctl.add_argument("--arg", action="append", metavar="KEY=VALUE",
                     help="an argument; VALUE is JSON if it parses, else a string")
    ctl.add_argument("--run-dir", type=Path)
    ctl.add_argument("--socket", type=Path)
    ctl.add_argument("--timeout", type=float, default=120.0)
    ctl.add_argument("--compact", action="store_true", help="one-line JSON output")
    run = sub.add_parser("run", help="run scenario files, each in a fresh room "
                         "(docs/scenarios.md)")
    run.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    run.add_argument("--junit", type=Path, metavar="OUT.xml", help="also write JUnit XML")
    run.add_argument("--run-dir", type=Path,
                     help="keep each room's run directory under this new or empty directory")
    replay_cli.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as exc:  # argparse printed its one-line usage error
        return 2 if exc.code else 0
    logging.basicConfig(level=logging.WARNING, format="igrt-sim: %(name)s: %(message)s")
    # igrtd dropping its Modbus connection at shutdown is expected; pymodbus logs it loudly.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        if a.command == "up":
            return asyncio.run(_up(a.room, a.run_dir, a.json))
        if a.command == "run":
            return _run(a.scenarios, a.junit, a.run_dir)
        if a.command == "replay":
            return replay_cli.run(a)
        return _ctl(a)
    except KeyboardInterrupt:
        return 0
    except (UsageError, ValueError) as exc:  # refused input: a description, --arg
        return _fail(str(exc), 2)
    except (RuntimeError, TimeoutError, OSError) as exc:
        return _fail(f"failed: {exc}", 1)
    except Exception as exc:  # a user-facing program: one line, never a traceback
        logging.getLogger("igrt.sim").debug("igrt-sim failed", exc_info=True)
        return _fail(f"failed: {type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    raise SystemExit(main())
