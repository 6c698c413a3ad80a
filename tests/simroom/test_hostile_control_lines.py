"""Malformed, hostile and huge control lines are answered with one line, never a crash;
NaN is refused on the wire and in-process."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from sim.control_ops import OpError, run_op
from sim.control_server import MAX_LINE_BYTES

from .conftest import SimUp


def _exchange(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        buf += chunk
    assert buf.count(b"\n") == 1
    reply: dict[str, Any] = json.loads(buf)
    return reply


@pytest.mark.parametrize("line", [
    b"not json\n",
    b'{"op": "gantry", "args": {"angle_deg": NaN}}\n',
    b'{"op": "gantry", "args": {"angle_deg": Infinity}}\n',
    b'{"op": "gantry", "args": {"angle_deg": 1e999}}\n',
    b"[" * 100 + b"]" * 100 + b"\n",
    b'{"op": "truth", "args": {"a": ' + b'{"a": ' * 20 + b"1" + b"}" * 21 + b"}\n",
    b'{"op": "truth", "op": "clear"}\n',
    b'{"op": 5}\n',
    b'{"op": "truth", "args": [1]}\n',
    b'{"op": "truth", "sudo": true}\n',
    b'"truth"\n',
    b"\xff\xfe\n",
    b'{"op": "\\u0000\\n' + b"x" * 200 + b'"}\n',
], ids=["text", "nan", "infinity", "overflow", "deep-array", "deep-args", "dup-key",
        "op-number", "args-list", "extra-key", "string", "not-utf8", "control-chars"])
def test_a_bad_line_gets_one_error_line_and_the_connection_goes_on(sim_room: SimUp,
                                                                   line: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sim_room.control))
        reply = _exchange(s, line)
        assert reply["ok"] is False and "\n" not in reply["error"]
        assert _exchange(s, b'{"op": "truth"}\n')["ok"] is True


def test_a_huge_line_is_refused_and_the_server_lives(sim_room: SimUp) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sim_room.control))
        reply = _exchange(s, b'{"op": "truth", "args": {"x": "' + b"a" * (MAX_LINE_BYTES * 2)
                          + b'"}}\n')
        assert reply["ok"] is False and "longer than the limit" in reply["error"]
    assert sim_room.ctl("truth")["couch"]["state"]


@pytest.mark.parametrize("args, expect", [
    ({"angle_deg": float("nan")}, "not a finite number"),
    ({"angle_deg": float("inf")}, "not a finite number"),
    ({"angle_deg": -1.0}, "-1.0 deg is below the minimum 0.0 deg"),
])
def test_run_op_refuses_non_finite_and_out_of_range_in_process(args: dict, expect: str) -> None:
    # Arguments are validated before the room is touched, so no room is needed here.
    with pytest.raises(OpError) as info:
        asyncio.run(run_op(None, "gantry", args))  # type: ignore[arg-type]
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_ctl_refuses_nan_before_sending(sim_room: SimUp) -> None:
    import subprocess
    import sys

    from .conftest import REPO

    r = subprocess.run([sys.executable, "-m", "sim.cli", "ctl", "gantry", "--arg",
                        "angle_deg=nan", "--socket", str(sim_room.control)],
                       check=False, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a finite number" in r.stderr
    assert r.stderr.count("\n") == 1
