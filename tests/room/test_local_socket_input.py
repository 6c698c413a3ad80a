"""No line on the local socket ends the connection or igrtd (issue 11, item 1).

Each hostile line gets a one-line refusal on the same connection, is audited,
and the next request on that connection is answered as usual.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.audit import read_records
from daemon.config import RoomConfig
from daemon.console.tokens import MemoryReplayCache
from daemon.control import MAX_REQUEST_BYTES, ControlServer
from sim.room import DaemonProcess


class Line:
    """One connection; send raw bytes, read one reply line."""

    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        for _ in range(100):  # the socket file appears at bind, a moment before listen
            try:
                self.s.connect(str(path))
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        else:
            self.s.connect(str(path))
        self.f = self.s.makefile("rb")

    def send(self, raw: bytes) -> dict[str, Any]:
        self.s.sendall(raw)
        line = self.f.readline()
        assert line, "igrtd closed the connection"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def status_ok(self) -> bool:
        return bool(self.send(b'{"cmd": "status", "user": "alice"}\n')["ok"])

    def close(self) -> None:
        self.f.close()
        self.s.close()


@pytest.fixture
def line(daemon: DaemonProcess) -> Any:
    conn = Line(daemon.socket_path)
    yield conn
    conn.close()


def _refused_and_alive(line: Line, daemon: DaemonProcess, raw: bytes, code: str) -> dict[str, Any]:
    reply = line.send(raw)
    assert not reply["ok"] and reply["code"] == code, reply
    assert "\n" not in reply["error"]
    assert line.status_ok(), "the connection did not go on"
    assert daemon.proc is not None and daemon.proc.poll() is None, "igrtd exited"
    return reply


def test_a_100000_deep_line_is_refused_and_the_connection_goes_on(line, daemon) -> None:
    raw = b'{"cmd": "status", "user": "alice", "args": {"a": ' + b"[" * 100_000 \
        + b"]" * 100_000 + b"}}\n"
    reply = _refused_and_alive(line, daemon, raw, "bad_request")
    assert "depth" in reply["error"]
    assert any("depth" in r.details.get("reason", "")
               for r in read_records(daemon.state_dir / "audit", event="reject"))


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_non_finite_number_in_args_is_refused(line, daemon, number: bytes) -> None:
    raw = b'{"cmd": "jog", "user": "sam", "args": {"axis": "lat", "velocity": ' + number + b"}}\n"
    _refused_and_alive(line, daemon, raw, "bad_request")


def test_a_line_over_the_size_limit_is_refused_and_the_next_line_is_answered(line,
                                                                             daemon) -> None:
    raw = b'{"cmd": "status", "user": "alice", "pad": "' + b"x" * (MAX_REQUEST_BYTES * 3) + b'"}\n'
    reply = _refused_and_alive(line, daemon, raw, "bad_request")
    assert "too large" in reply["error"] and str(MAX_REQUEST_BYTES) in reply["error"]


def test_a_line_that_is_not_utf8_is_refused(line, daemon) -> None:
    _refused_and_alive(line, daemon, b'{"cmd": "status", "user": "\xff\xfe"}\n', "bad_request")


@pytest.mark.parametrize("raw", [b"[1, 2, 3]\n", b'"status"\n', b"42\n", b"null\n",
                                 b'{"cmd": "status", "cmd": "stop", "user": "alice"}\n',
                                 b"{not json\n"])
def test_a_line_that_is_not_one_json_object_is_refused(line, daemon, raw: bytes) -> None:
    _refused_and_alive(line, daemon, raw, "bad_request")


def test_a_signed_request_that_is_not_a_token_is_refused(line, daemon) -> None:
    _refused_and_alive(line, daemon, b'{"jws": "' + b"[" * 5000 + b'"}\n', "malformed")


# --- an unexpected exception inside a command ------------------------------


class _BrokenService:
    """A RoomCommands whose status raises what no handler expects."""

    def __init__(self) -> None:
        self.audited: list[tuple[str, str, dict[str, Any]]] = []

    def audit(self, event: str, actor: str, **details: Any) -> None:
        self.audited.append((event, actor, details))

    async def status(self, actor: Any) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    async def interlocks(self, actor: Any) -> dict[str, Any]:
        return {"all_closed": True}


def test_an_exception_inside_a_command_is_answered_internal_and_audited(tmp_path) -> None:
    config = RoomConfig.model_validate({
        "room": "r1", "state_dir": str(tmp_path), "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist"}]})
    service = _BrokenService()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = ControlServer(service, config, replay_cache=MemoryReplayCache())
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(config.control_socket))
            writer.write(b'{"cmd": "status", "user": "alice"}\n')
            first = json.loads(await reader.readline())
            writer.write(b'{"cmd": "interlocks", "user": "alice"}\n')
            second = json.loads(await reader.readline())
            writer.close()
            return first, second
        finally:
            await server.close()

    first, second = asyncio.run(scenario())
    assert not first["ok"] and first["code"] == "internal", first
    assert "RecursionError" in first["error"] and "\n" not in first["error"]
    assert second == {"ok": True, "result": {"all_closed": True}}
    events = [(e, d.get("command")) for e, _a, d in service.audited]
    assert ("internal_error", "status") in events
