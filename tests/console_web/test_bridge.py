"""igrt-console's optional /mqtt: MQTT over WebSockets bridged to the broker's TCP listener
(Mosquitto 2.0's own WebSockets listener takes seconds per review image)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.console_web.bridge import (
    MAX_FRAME_BYTES,
    OP_BINARY,
    FrameError,
    accept_key,
    frame,
    read_frame,
)
from sim.broker import free_port, running_mosquitto
from sim.parent_death import die_with_parent

from .process import stop_console

REPO = Path(__file__).resolve().parents[2]
KEY = base64.b64encode(os.urandom(16)).decode()


class Console:
    def __init__(self, tmp: Path, bridge: dict[str, Any] | None) -> None:
        cfg: dict[str, Any] = {"listen": {"host": "127.0.0.1", "port": 0},
                               "broker_url": "ws://127.0.0.1/mqtt"}
        if bridge is not None:
            cfg["mqtt_bridge"] = bridge
        path = tmp / "console.json"
        path.write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.console_web", "--config", str(path)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # SIGTERM when the test process dies, SIGKILL included: no orphan server.
            preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, self.proc.communicate()[1]
        self.port = int(line.strip().rstrip("/").rsplit(":", 1)[1])

    def upgrade(self, **headers: str) -> tuple[socket.socket, bytes]:
        """A raw upgrade request to /mqtt: the socket and the response head."""
        h = {"Host": f"127.0.0.1:{self.port}", "Upgrade": "websocket",
             "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Protocol": "mqtt",
             "Origin": f"http://127.0.0.1:{self.port}"}
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(("GET /mqtt HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()
                                                      if v) + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        return s, head

    def stop(self) -> str:
        return stop_console(self.proc)[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    with running_mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def console(tmp_path: Path, broker: Any) -> Iterator[Console]:
    c = Console(tmp_path, {"host": broker.host, "port": broker.port})
    yield c
    c.stop()


def _masked(opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True,
            length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code(s: socket.socket) -> int:
    """The status code of the close frame the server sends (skipping other frames)."""
    f = s.makefile("rb")
    while True:
        b0, b1 = f.read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", f.read(8))[0]
        data = f.read(n)
        if b0 & 0x0F == 0x8:
            return int(struct.unpack("!H", data[:2])[0])


def test_frames_round_trip_and_bad_frames_are_refused() -> None:
    payload = os.urandom(70000)
    fin, op, data = read_frame(io.BytesIO(_masked(OP_BINARY, payload)))
    assert (fin, op, data) == (True, OP_BINARY, payload)
    assert read_frame(io.BytesIO(_masked(OP_BINARY, b"")))[2] == b""
    assert frame(OP_BINARY, b"ab") == b"\x82\x02ab"
    assert frame(OP_BINARY, payload)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert frame(OP_BINARY, b"y" * 300)[:4] == b"\x82\x7e" + struct.pack("!H", 300)
    for bad, code in ((_masked(OP_BINARY, b"x", masked=False), 1002),
                      (_masked(0x9, b"x" * 126), 1002),
                      (_masked(0x9, b"x", fin=False), 1002),
                      (_masked(OP_BINARY, b"", length=MAX_FRAME_BYTES + 1)[:14], 1009),
                      (b"\xc2\x81" + b"\0" * 5, 1002)):  # RSV1: no extension agreed
        with pytest.raises(FrameError) as err:
            read_frame(io.BytesIO(bad))
        assert err.value.code == code
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455


async def test_a_review_sized_message_reaches_a_websocket_client_at_once(
        console: Console, broker: Any) -> None:
    image = os.urandom(180_000)
    async with aiomqtt.Client(broker.host, broker.port, username="igrtd",
                              password=broker.creds["igrtd"]) as igrtd:
        await igrtd.publish("igrt/room1/review/axial/fixed", image, qos=1, retain=True)
    t0 = time.monotonic()
    async with aiomqtt.Client("127.0.0.1", console.port, transport="websockets",
                              websocket_path="/mqtt", username="console1",
                              password=broker.creds["console1"], timeout=5) as browser:
        await browser.subscribe("igrt/room1/review/#", qos=1)
        async for msg in browser.messages:
            assert bytes(msg.payload) == image  # type: ignore[arg-type]
            break
        # Both ways: a command published through the bridge reaches the broker.
        async with aiomqtt.Client(broker.host, broker.port, username="igrtd",
                                  password=broker.creds["igrtd"]) as igrtd:
            await igrtd.subscribe("igrt/room1/cmd", qos=1)
            await browser.publish("igrt/room1/cmd", b"x" * 20000, qos=1)
            async for msg in igrtd.messages:
                assert len(bytes(msg.payload)) == 20000  # type: ignore[arg-type]
                break
    assert time.monotonic() - t0 < 2.0  # Mosquitto's own listener: ~4.4 s for the image


async def test_the_broker_still_authenticates_every_bridged_connection(
        console: Console, broker: Any) -> None:
    for user, password in ((None, None), ("console1", "wrong")):
        with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
            async with aiomqtt.Client("127.0.0.1", console.port, transport="websockets",
                                      websocket_path="/mqtt", username=user,
                                      password=password, timeout=5):
                pass  # pragma: no cover


def test_upgrades_that_are_not_mqtt_from_this_origin_are_refused(console: Console) -> None:
    for headers, status in (({"Upgrade": ""}, b"426"), ({"Sec_WebSocket_Version": "8"}, b"426"),
                            ({"Sec_WebSocket_Key": "short"}, b"400"),
                            ({"Sec_WebSocket_Protocol": "chat"}, b"400"),
                            ({"Origin": "https://evil.example"}, b"403")):
        s, head = console.upgrade(**headers)
        s.close()
        assert head.split(b" ")[1] == status, (headers, head)
    s, head = console.upgrade()
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Protocol: mqtt" in head
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in head
    s.close()


@pytest.mark.parametrize(("data", "code"), [
    (_masked(OP_BINARY, b"\xc0\x00", masked=False), 1002),  # a PINGREQ, unmasked
    (_masked(0x1, b"text"), 1003),
    (_masked(OP_BINARY, b"", length=MAX_FRAME_BYTES + 1)[:14], 1009),
])
def test_a_bad_frame_closes_that_connection_with_its_code(console: Console, data: bytes,
                                                          code: int) -> None:
    s, head = console.upgrade()
    assert head.startswith(b"HTTP/1.1 101 ")
    s.sendall(data)
    assert _close_code(s) == code
    s.close()
    s, head = console.upgrade()  # and the server goes on
    assert head.startswith(b"HTTP/1.1 101 ")
    s.close()


def test_without_the_bridge_there_is_no_mqtt_and_an_unreachable_broker_is_502(
        tmp_path: Path) -> None:
    c = Console(tmp_path, None)
    try:
        s, head = c.upgrade()
        s.close()
        assert head.startswith(b"HTTP/1.1 404 ")
    finally:
        c.stop()
    (tmp_path / "b").mkdir()
    c = Console(tmp_path / "b", {"host": "127.0.0.1", "port": free_port()})
    try:
        s, head = c.upgrade()
        body = s.recv(1000)
        s.close()
        assert head.startswith(b"HTTP/1.1 502 ") and b"not reachable" in body
    finally:
        err = c.stop()
    assert "Traceback" not in err


def test_sigterm_stops_it_with_a_bridged_connection_open(tmp_path: Path, broker: Any) -> None:
    c = Console(tmp_path, {"host": broker.host, "port": broker.port})
    s, head = c.upgrade()
    assert head.startswith(b"HTTP/1.1 101 ")
    t0 = time.monotonic()
    err = c.stop()
    s.close()
    assert c.proc.returncode == 0 and time.monotonic() - t0 < 3.0
    assert "Traceback" not in err


def test_with_the_bridge_the_page_is_told_to_fetch_review_images_through_it(
        console: Console) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{console.port}/config.json", timeout=10) as r:
        doc = json.loads(r.read())
    # Only the review images: the motion path stays on Mosquitto's own listener.
    assert doc["review_url"] == "/mqtt" and doc["broker_url"] == "ws://127.0.0.1/mqtt"
