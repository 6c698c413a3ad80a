"""Codec for the couch controller's binary serial protocol (docs/protocols/couch-serial.md).

Pure bytes in, bytes out: no I/O, no clocks, no policy. Both the host driver
(drivers/couch.py) and the simulated controller (sim/couch.py) use it, so the
two sides cannot drift apart.

Frame: SOF(A5 5A) LEN SEQ TYPE PAYLOAD[LEN] CRC16(LE) where the CRC is
CRC-16/CCITT-FALSE over LEN..PAYLOAD. Multi-byte fields are little-endian.
Positions travel as int32 micrometres / micro-degrees.
"""

from __future__ import annotations

import math
import struct
from binascii import crc_hqx
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

SOF = b"\xa5\x5a"
HEADER_LEN = 5  # SOF(2) LEN SEQ TYPE
CRC_LEN = 2
OVERHEAD = HEADER_LEN + CRC_LEN
MAX_PAYLOAD = 64
UNSOLICITED_SEQ = 0  # controller-initiated frames (STATUS push); hosts use 1..255
N_AXES = 6
NO_ECHO = 0
# The link's default speed, 8N1 (docs/protocols/couch-serial.md "Wire time" and
# "Link speed": at 460800 the wire took 2.7 ms of the 5 ms confirm-to-motion
# budget): igrtd's configuration default and the simulated controller's, from
# one place.
DEFAULT_BAUDRATE = 921600

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0).

    binascii.crc_hqx is exactly this polynomial, unreflected, with a caller-given
    initial value; it runs in C, which keeps framing cheap.
    """
    return crc_hqx(data, 0xFFFF)


class MsgType(IntEnum):
    # host -> controller
    HEARTBEAT = 0x01
    STATUS_REQ = 0x02
    TARGET = 0x03
    GO = 0x04
    STOP = 0x05
    RESET = 0x06
    JOG = 0x07
    # controller -> host
    ACK = 0x81
    NAK = 0x82
    STATUS = 0x83
    TARGET_ECHO = 0x84


class NakReason(IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_TYPE = 3
    BAD_STATE = 4
    OUT_OF_RANGE = 5
    UNKNOWN_ECHO = 6
    EXPIRED_ECHO = 7
    SUPERSEDED_ECHO = 8
    USED_ECHO = 9
    CANCELLED_ECHO = 10


class NakField(IntEnum):
    """What a NAK's value/limit refer to. 0..5 are axis positions (AXIS_0 + i)."""

    AXIS_0 = 0x00  # position of axis i is AXIS_0 + i
    JOG_VELOCITY_0 = 0x10  # jog velocity of axis i is JOG_VELOCITY_0 + i
    VALIDITY_MS = 0x20
    DURATION_MS = 0x21
    AXIS_INDEX = 0x22
    NONE = 0xFF


class CtrlState(IntEnum):
    IDLE = 0
    ARMED = 1
    MOVING = 2
    STOPPING = 3
    FAULT = 4


class FaultCode(IntEnum):
    NONE = 0
    HEARTBEAT_LOST = 1
    FOLLOWING_ERROR = 2
    TRAVEL_LIMIT = 3
    INTERNAL = 4


# ---------------------------------------------------------------- messages

Positions = tuple[int, int, int, int, int, int]

_S_TARGET = struct.Struct("<6iH")
_S_ECHO = struct.Struct("<H6iH6iB")
_S_GO = struct.Struct("<H")
_S_JOG = struct.Struct("<BiH")
_S_ACK = struct.Struct("<B")
_S_NAK = struct.Struct("<BBBii")
_S_STATUS = struct.Struct("<BBBBHH6iHHHI")
_S_CRC = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    TYPE: ClassVar[MsgType] = MsgType.STATUS_REQ

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Stop:
    TYPE: ClassVar[MsgType] = MsgType.STOP

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Reset:
    TYPE: ClassVar[MsgType] = MsgType.RESET

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Target:
    TYPE: ClassVar[MsgType] = MsgType.TARGET
    positions: Positions  # um / udeg
    validity_ms: int

    def payload(self) -> bytes:
        return _S_TARGET.pack(*self.positions, self.validity_ms)


@dataclass(frozen=True, slots=True)
class Go:
    TYPE: ClassVar[MsgType] = MsgType.GO
    echo_id: int

    def payload(self) -> bytes:
        return _S_GO.pack(self.echo_id)


@dataclass(frozen=True, slots=True)
class Jog:
    TYPE: ClassVar[MsgType] = MsgType.JOG
    axis: int
    velocity: int  # um/s or udeg/s, signed
    duration_ms: int

    def payload(self) -> bytes:
        return _S_JOG.pack(self.axis, self.velocity, self.duration_ms)


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[MsgType] = MsgType.ACK
    acked_type: int

    def payload(self) -> bytes:
        return _S_ACK.pack(self.acked_type)


@dataclass(frozen=True, slots=True)
class Nak:
    TYPE: ClassVar[MsgType] = MsgType.NAK
    nacked_type: int
    reason: int
    field: int = NakField.NONE
    value: int = 0
    limit: int = 0

    def payload(self) -> bytes:
        return _S_NAK.pack(self.nacked_type, self.reason, self.field, self.value, self.limit)


@dataclass(frozen=True, slots=True)
class Status:
    TYPE: ClassVar[MsgType] = MsgType.STATUS
    state: int
    fault_code: int
    moving_bits: int
    fault_bits: int
    echo_id: int
    echo_remaining_ms: int
    positions: Positions
    crc_errors: int
    framing_errors: int
    heartbeat_timeout_ms: int
    uptime_ms: int

    def payload(self) -> bytes:
        return _S_STATUS.pack(
            self.state,
            self.fault_code,
            self.moving_bits,
            self.fault_bits,
            self.echo_id,
            self.echo_remaining_ms,
            *self.positions,
            self.crc_errors,
            self.framing_errors,
            self.heartbeat_timeout_ms,
            self.uptime_ms,
        )


@dataclass(frozen=True, slots=True)
class TargetEchoMsg:
    TYPE: ClassVar[MsgType] = MsgType.TARGET_ECHO
    echo_id: int
    positions: Positions  # the target accepted
    validity_ms: int
    # Where the couch was, and which axes moved, when the TARGET arrived: what the
    # host checks before GO, sent in the echo so that no STATUS push precedes it.
    armed_at: Positions
    moving_bits: int

    def payload(self) -> bytes:
        return _S_ECHO.pack(self.echo_id, *self.positions, self.validity_ms, *self.armed_at,
                            self.moving_bits)


Message = (
    Heartbeat | StatusRequest | Stop | Reset | Target | Go | Jog | Ack | Nak | Status | TargetEchoMsg
)

HOST_TYPES = frozenset(
    {
        MsgType.HEARTBEAT,
        MsgType.STATUS_REQ,
        MsgType.TARGET,
        MsgType.GO,
        MsgType.STOP,
        MsgType.RESET,
        MsgType.JOG,
    }
)

# Payload length each type must carry; a frame with a good CRC but another
# length is answered NAK(bad_length) and never acted on.
PAYLOAD_LEN: dict[int, int] = {
    MsgType.HEARTBEAT: 0,
    MsgType.STATUS_REQ: 0,
    MsgType.STOP: 0,
    MsgType.RESET: 0,
    MsgType.TARGET: _S_TARGET.size,
    MsgType.GO: _S_GO.size,
    MsgType.JOG: _S_JOG.size,
    MsgType.ACK: _S_ACK.size,
    MsgType.NAK: _S_NAK.size,
    MsgType.STATUS: _S_STATUS.size,
    MsgType.TARGET_ECHO: _S_ECHO.size,
}


class MessageError(ValueError):
    """A frame with a good CRC whose type or payload cannot be a message."""

    def __init__(self, reason: NakReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _decode_status(p: bytes) -> Status:
    v = _S_STATUS.unpack(p)
    return Status(v[0], v[1], v[2], v[3], v[4], v[5], v[6:12], v[12], v[13], v[14], v[15])


def _decode_target(p: bytes) -> Target:
    v = _S_TARGET.unpack(p)
    return Target(v[0:6], v[6])


def _decode_echo(p: bytes) -> TargetEchoMsg:
    v = _S_ECHO.unpack(p)
    return TargetEchoMsg(v[0], v[1:7], v[7], v[8:14], v[14])


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MsgType.HEARTBEAT: lambda p: Heartbeat(),
    MsgType.STATUS_REQ: lambda p: StatusRequest(),
    MsgType.STOP: lambda p: Stop(),
    MsgType.RESET: lambda p: Reset(),
    MsgType.TARGET: _decode_target,
    MsgType.GO: lambda p: Go(*_S_GO.unpack(p)),
    MsgType.JOG: lambda p: Jog(*_S_JOG.unpack(p)),
    MsgType.ACK: lambda p: Ack(*_S_ACK.unpack(p)),
    MsgType.NAK: lambda p: Nak(*_S_NAK.unpack(p)),
    MsgType.STATUS: _decode_status,
    MsgType.TARGET_ECHO: _decode_echo,
}


def decode_message(frame: Frame) -> Message:
    """Turn a CRC-checked frame into a message; MessageError if it cannot be one."""
    expected = PAYLOAD_LEN.get(frame.type)
    if expected is None:
        raise MessageError(NakReason.UNKNOWN_TYPE, f"unknown message type 0x{frame.type:02x}")
    if len(frame.payload) != expected:
        name = MsgType(frame.type).name
        raise MessageError(
            NakReason.BAD_LENGTH,
            f"{name} payload is {len(frame.payload)} bytes, expected {expected}",
        )
    return _DECODERS[frame.type](frame.payload)


def encode(seq: int, msg: Message) -> bytes:
    """One complete frame carrying `msg` with sequence number `seq` (0..255)."""
    return encode_raw(seq, msg.TYPE, msg.payload())


def encode_raw(seq: int, msg_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    body = bytes((len(payload), seq & 0xFF, msg_type & 0xFF)) + payload
    return SOF + body + _S_CRC.pack(crc16_ccitt_false(body))


# ---------------------------------------------------------------- units


# Wire integers per boundary unit: mm -> micrometres, deg -> micro-degrees
# (and the same for mm/s, deg/s).
MM = 1_000.0
DEG = 1_000_000.0
AXIS_SCALE: tuple[float, ...] = (MM, MM, MM, DEG, DEG, DEG)  # lat long vert yaw pitch roll


def to_wire(value: float, scale: float, name: str = "value", unit: str = "mm") -> int:
    """mm or deg (times `scale`) -> int32; refuses (never clips) what does not fit."""
    if not math.isfinite(value):
        raise ValueError(f"{name} {value} {unit} is not a finite number")
    w = round(value * scale)
    if not INT32_MIN <= w <= INT32_MAX:
        raise ValueError(
            f"{name} {value} {unit} does not fit the wire format "
            f"(limit +-{INT32_MAX / scale:.3f} {unit})"
        )
    return w


def from_wire(value: int, scale: float) -> float:
    return value / scale


def positions_to_wire(values: tuple[float, ...], names: tuple[str, ...], units: tuple[str, ...]
                      ) -> Positions:
    a, b, c, d, e, f = (
        to_wire(v, k, n, u) for v, k, n, u in zip(values, AXIS_SCALE, names, units)
    )
    return (a, b, c, d, e, f)


def positions_from_wire(p: tuple[int, ...]) -> tuple[float, float, float, float, float, float]:
    return (p[0] / MM, p[1] / MM, p[2] / MM, p[3] / DEG, p[4] / DEG, p[5] / DEG)


# ---------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Bytes the decoder had to throw away.

    kind: "garbage" (bytes before a SOF), "bad_length" (LEN > MAX_PAYLOAD),
    "bad_crc", "abandoned" (a partial frame given up by flush()).
    seq/type are copied from the damaged header when there was one; they are
    NOT trustworthy (the CRC failed) and only `plausible` ones may be NAKed.
    """

    kind: str
    nbytes: int
    seq: int | None = None
    type: int | None = None
    plausible: bool = False


class FrameDecoder:
    """Streaming frame decoder with resynchronisation.

    `feed(data)` returns the frames and errors completed by `data`. After a bad
    CRC or impossible length only the first SOF byte is dropped and the scan
    restarts, so a good frame hidden behind a damaged one is still found.

    `priority_types`: message types (the controller passes {STOP}) that are
    looked for *inside* an incomplete candidate frame, so a STOP that follows
    a truncated frame is acted on at once instead of after the truncated
    frame's claimed length has arrived. Each such frame is reported exactly
    once (its stream offset is remembered).
    """

    __slots__ = ("_base", "_buf", "_preempted", "_priority")

    def __init__(self, priority_types: frozenset[int] = frozenset()) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._priority = priority_types
        self._preempted: set[int] = set()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | DecodeError]:
        self._buf += data
        return self._scan()

    def flush(self) -> list[Frame | DecodeError]:
        """Give up on any partial frame (end of stream or inter-byte timeout)."""
        out: list[Frame | DecodeError] = []
        while self._buf:
            before = len(self._buf)
            if self._buf[:2] == SOF:
                self._drop(1)
                out.append(DecodeError("abandoned", 1))
            out.extend(self._scan())
            if len(self._buf) == before:  # only a lone partial SOF byte may remain
                out.append(DecodeError("abandoned", len(self._buf)))
                self._drop(len(self._buf))
        return out

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._base += n
        if self._preempted:
            self._preempted = {p for p in self._preempted if p >= self._base}

    def _scan(self) -> list[Frame | DecodeError]:
        out: list[Frame | DecodeError] = []
        buf = self._buf
        while True:
            i = buf.find(SOF)
            if i < 0:
                # keep a trailing first SOF byte: its partner may be in the next read
                keep = 1 if buf and buf[-1] == SOF[0] else 0
                n = len(buf) - keep
                if n:
                    out.append(DecodeError("garbage", n))
                    self._drop(n)
                return out
            if i:
                out.append(DecodeError("garbage", i))
                self._drop(i)
            if len(buf) < HEADER_LEN:
                return out
            n = buf[2]
            if n > MAX_PAYLOAD:
                out.append(DecodeError("bad_length", 1, buf[3], buf[4]))
                self._drop(1)
                continue
            total = OVERHEAD + n
            if len(buf) < total:
                if self._priority:
                    self._look_ahead(out)
                return out
            crc = buf[total - 2] | (buf[total - 1] << 8)
            if crc16_ccitt_false(memoryview(buf)[2 : total - 2]) != crc:
                plausible = PAYLOAD_LEN.get(buf[4]) == n
                out.append(DecodeError("bad_crc", 1, buf[3], buf[4], plausible))
                self._drop(1)
                continue
            if self._base in self._preempted:
                self._preempted.discard(self._base)
            else:
                out.append(Frame(buf[3], buf[4], bytes(buf[5 : total - 2])))
            self._drop(total)

    def _look_ahead(self, out: list[Frame | DecodeError]) -> None:
        buf = self._buf
        j = buf.find(SOF, 1)
        while j >= 0:
            if len(buf) - j >= HEADER_LEN and buf[j + 4] in self._priority:
                n = buf[j + 2]
                total = OVERHEAD + n
                pos = self._base + j
                if len(buf) - j >= total and pos not in self._preempted:
                    crc = buf[j + total - 2] | (buf[j + total - 1] << 8)
                    if crc16_ccitt_false(memoryview(buf)[j + 2 : j + total - 2]) == crc:
                        self._preempted.add(pos)
                        out.append(Frame(buf[j + 3], buf[j + 4], bytes(buf[j + 5 : j + total - 2])))
            j = buf.find(SOF, j + 1)
