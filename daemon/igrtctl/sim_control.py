"""`igrtctl sim OP ...`: the client of a simulated room's control API.

    igrtctl sim truth --run-dir /tmp/r1
    igrtctl sim inject --arg fault=interlock_open --arg name=door_closed --sim-socket PATH

The control API (docs/sim-control-api.md) is one JSON object per line over a
Unix socket that only `igrt-sim up` creates, in its own run directory. This
module is the one client of it: igrtctl uses it here, `igrt-sim ctl`
(sim/cli.py), the pytest plugin (sim/testing.py) and sim.control_server.call
use the same functions. It lives in daemon/ because production code never
imports `sim` (import-linter); it imports nothing of the simulator either, it
only speaks the line protocol, so it cannot stand a room up or reach a real one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from daemon.igrtctl.exits import ArgParser, ExitCode, Unreachable, UsageError, err
from daemon.jsontypes import JsonObject, JsonValue, as_object
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads

SOCKET_ENV = "IGRT_SIM_CONTROL"
CONTROL_SOCKET_NAME = "control.sock"
DEFAULT_TIMEOUT_S = 120.0  # acquire_cbct renders a volume: seconds, not milliseconds
MAX_REPLY_BYTES = 16 << 20
# float() accepts these words; JSON has no NaN/Infinity and the server refuses them,
# so they are refused here with a clearer line than "not JSON".
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
               "-infinity"}


def call(path: Path | str, op: str, args: JsonObject | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> JsonObject:
    """One request, one reply: `{"ok": true, ...}` or `{"ok": false, "error": ...}`.

    Raises OSError when the socket cannot be reached or stops answering,
    ValueError when the arguments cannot be sent (NaN) or the reply is not a
    JSON object.
    """
    line = json.dumps({"op": op, "args": args or {}}, allow_nan=False) + "\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(line.encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                raise ValueError(f"reply longer than {MAX_REPLY_BYTES} bytes")
    if not buf:
        raise ConnectionError("the simulated room closed the connection without a reply")
    return as_object(json.loads(buf), "reply")


def arg_value(key: str, text: str) -> JsonValue:
    """VALUE of `--arg KEY=VALUE`: JSON if it parses, else the text as a string."""
    if text.strip().lower() in _NON_FINITE:
        raise UsageError(f"--arg {key}={text}: not a finite number (NaN and Infinity are refused)")
    try:
        value: JsonValue = strict_loads(text, max_depth=8, max_bytes=1 << 16)
    except JsonInputError:
        return text  # a bare word is a string: --arg fault=estop
    return value


def parse_arg_pairs(pairs: list[str]) -> JsonObject:
    """`["fault=estop", "code=7"]` -> `{"fault": "estop", "code": 7}`; UsageError otherwise."""
    out: JsonObject = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg {pair!r}: write KEY=VALUE")
        if key in out:
            raise UsageError(f"--arg {key} given twice")
        out[key] = arg_value(key, value)
    return out


def socket_path(sim_socket: Path | None, run_dir: Path | None) -> Path:
    """Where the control API is: the socket, else RUN_DIR/control.sock, else $IGRT_SIM_CONTROL."""
    if sim_socket is not None:
        return Path(sim_socket)
    if run_dir is not None:
        return Path(run_dir) / CONTROL_SOCKET_NAME
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    raise UsageError(f"say where the simulated room is: --run-dir DIR, --sim-socket PATH "
                     f"or ${SOCKET_ENV}")


def request(path: Path, op: str, args: JsonObject, timeout_s: float) -> JsonObject:
    """`call` with igrtctl's errors: Unreachable for the transport, UsageError for the args."""
    try:
        json.dumps(args, allow_nan=False)
    except ValueError as exc:
        raise UsageError(f"sim {op}: cannot send these arguments: {exc}") from None
    try:
        return call(path, op, args, timeout_s=timeout_s)
    except OSError as exc:
        raise Unreachable(f"cannot reach the simulated room at {path}: "
                          f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise Unreachable(f"the simulated room at {path} gave no readable reply: {exc}") from None


def sim_parser() -> ArgParser:
    ap = ArgParser(prog="igrtctl sim",
                   description="one operation of a simulated room's control API "
                               "(docs/sim-control-api.md; igrt-sim up stands the room up)")
    ap.add_argument("op", help="describe, truth, inject, clear, patient, gantry, pendant, "
                               "record, acquire_cbct")
    ap.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an argument; VALUE is JSON if it parses, else a string")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--run-dir", type=Path, help="the room's run directory")
    where.add_argument("--sim-socket", type=Path,
                       help=f"the control socket (default ${SOCKET_ENV})")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    ap.add_argument("--compact", action="store_true", help="one-line JSON output")
    return ap


def run_sim(argv: list[str]) -> int:
    """igrtctl sim: OK and the result as JSON, REFUSED with the room's one-line error,
    USAGE for bad input, UNREACHABLE (raised, mapped by main) when no room answers."""
    a = sim_parser().parse_args(argv)
    if not a.timeout > 0:
        raise UsageError(f"--timeout {a.timeout}: must be a positive number of seconds")
    args = parse_arg_pairs(a.arg)
    path = socket_path(a.sim_socket, a.run_dir)
    reply = request(path, a.op, args, a.timeout)
    if reply.get("ok") is not True:
        err(f"sim {a.op}: {reply.get('error', 'refused')}")
        return ExitCode.REFUSED
    reply.pop("ok")
    sys.stdout.write(json.dumps(reply, indent=None if a.compact else 2) + "\n")
    return ExitCode.OK
