"""Optional: MQTT over WebSockets at /mqtt, bridged byte for byte to the broker's TCP listener.

Why: Mosquitto 2.0 (Debian 12: 2.0.11) sends WebSockets traffic in 4 KiB chunks, one per
pass of its main loop, and the loop sleeps up to 100 ms when no plain-TCP client is
active: a 130 KB review image reaches a browser in ~3 s, the nine of a registration in
~30 s (upstream eclipse-mosquitto/mosquitto#1390). Over the broker's plain listener the
same messages take milliseconds. With `mqtt_bridge` in the config, igrt-console accepts
the browser's WebSocket (same origin as the page, subprotocol `mqtt`) and copies the
MQTT bytes to and from a TCP connection to the broker; the browser's `broker_url` is
then this server's `/mqtt`.

It carries bytes and nothing else: it never parses MQTT, holds no password and adds no
identity. The browser's CONNECT (its own user name and password) goes to Mosquitto,
which authenticates it and applies the ACL to everything after, exactly as on
Mosquitto's own WebSockets listener. What the bridge checks is the WebSocket framing
(RFC 6455): client frames masked, binary only, control frames small, at most
MAX_FRAME_BYTES each; anything else closes that connection. One thread per direction
per connection, at most MAX_CONNECTIONS at once.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import struct
import threading
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from daemon.console_web.config import BridgeConfig

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
# A browser's MQTT packet in one frame at most: the broker's max_packet_size (256 KiB)
# plus the frame's own header; the broker refuses bigger packets anyway.
MAX_FRAME_BYTES = 262144 + 16
MAX_CONNECTIONS = 64
CONNECT_TIMEOUT_S = 5.0
READ_CHUNK = 65536

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_UNSUPPORTED, CLOSE_TOO_BIG, CLOSE_UNAVAILABLE = (
    1000, 1002, 1003, 1009, 1011)


class HandshakeRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()  # RFC 6455's SHA-1


def check_handshake(headers: dict[str, str]) -> tuple[str, str]:
    """(Sec-WebSocket-Accept, subprotocol) for an acceptable upgrade request, else
    HandshakeRefused. `headers`: lower-case names."""
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in [
            t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise HandshakeRefused(426, "/mqtt is MQTT over WebSockets: an Upgrade request only")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeRefused(426, "WebSocket version 13 only")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeRefused(400, "bad Sec-WebSocket-Key") from None
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
    if chosen is None:
        raise HandshakeRefused(400, "the WebSocket subprotocol must be mqtt")
    origin = headers.get("origin")
    # A page of another site may not use a browser's connection from here (the broker
    # would still want a password; this keeps other sites out altogether).
    if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        raise HandshakeRefused(403, "WebSocket from another origin refused")
    return accept_key(key), chosen


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Reader(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _exact(reader: Reader, n: int) -> bytes:
    data = reader.read(n)  # a buffered reader: blocks until n bytes or the end
    if len(data) < n:
        raise ConnectionError("closed")
    return data


def read_frame(reader: Reader) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of one client frame; FrameError if not acceptable.
    `reader`: the request's buffered reader (bytes after the handshake are not lost)."""
    b0, b1 = _exact(reader, 2)
    fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
    if rsv:
        raise FrameError(CLOSE_PROTOCOL, "reserved bits set (no extension was agreed)")
    if not b1 & 0x80:
        raise FrameError(CLOSE_PROTOCOL, "client frames must be masked")
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", _exact(reader, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _exact(reader, 8))[0]
    if opcode >= 0x8 and (length > 125 or not fin):
        raise FrameError(CLOSE_PROTOCOL, "control frames are single and at most 125 bytes")
    if length > MAX_FRAME_BYTES:
        raise FrameError(CLOSE_TOO_BIG, f"frame of {length} bytes, limit {MAX_FRAME_BYTES}")
    mask = _exact(reader, 4)
    if length == 0:
        return fin, opcode, b""
    masked = _exact(reader, length)
    key = (mask * (length // 4 + 1))[:length]
    return fin, opcode, (int.from_bytes(masked, "big") ^ int.from_bytes(key, "big")).to_bytes(
        length, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (unmasked, FIN)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])


class Bridge:
    """The connections to the broker; `serve(client)` runs one until either side ends."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._tls: ssl.SSLContext | None = None
        if config.tls_ca is not None:
            self._tls = ssl.create_default_context(cafile=str(config.tls_ca))

    def reserve(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.config.host, self.config.port),
                                        timeout=CONNECT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.config.host)
        sock.settimeout(None)
        return sock

    def serve(self, client: socket.socket, reader: Reader, broker: socket.socket) -> None:
        """Copy until either side closes. Runs in the request's thread (client to broker,
        frames read from `reader`, the request's buffered reader of `client`); a second
        thread copies broker to client."""
        send_lock = threading.Lock()
        closed = threading.Event()

        def send(data: bytes) -> None:
            with send_lock:
                client.sendall(data)

        def shut() -> None:
            if closed.is_set():
                return
            closed.set()
            for s in (broker, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def broker_to_client() -> None:
            try:
                while chunk := broker.recv(READ_CHUNK):
                    send(frame(OP_BINARY, chunk))
                send(close_frame(CLOSE_NORMAL, "broker closed the connection"))
            except OSError:
                pass
            finally:
                shut()

        client.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pump = threading.Thread(target=broker_to_client, name="igrt-console mqtt bridge",
                                daemon=True)
        pump.start()
        try:
            while True:
                _fin, opcode, data = read_frame(reader)
                if opcode in (OP_BINARY, OP_CONT):
                    broker.sendall(data)  # MQTT is a byte stream: frame bounds do not matter
                elif opcode == OP_PING:
                    send(frame(OP_PONG, data))
                elif opcode == OP_PONG:
                    continue
                elif opcode == OP_CLOSE:
                    send(close_frame(CLOSE_NORMAL))
                    break
                else:
                    raise FrameError(CLOSE_UNSUPPORTED, "binary frames only (MQTT)")
        except FrameError as exc:
            try:
                send(close_frame(exc.code, str(exc)))
            except OSError:
                pass
        except (OSError, ConnectionError):
            pass
        finally:
            shut()
            pump.join(timeout=5)
            broker.close()
