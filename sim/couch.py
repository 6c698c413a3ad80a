"""Simulated 6-axis couch controller on a pseudo-terminal.

The device side of docs/protocols/couch-serial.md, speaking the same codec as
the driver. It opens a pty pair, keeps the slave end in raw mode and exposes
its path (`device_path`, e.g. /dev/pts/7) for the driver to open like any
serial port.

What it models: per-axis velocity/acceleration limits, its own travel limits
(targets outside them are NAKed out_of_range, never clipped), reported
position noise, the host-heartbeat watchdog, the two-step TARGET/ECHO/GO move
with single-use, expiring echoes, STOP pre-empting everything, service JOG,
and fault injection. `executed_commands`, `refused_commands` and
`motion_log` are the device-side record invariant tests check.

The line runs at `baudrate` (8N1, full duplex; sim/serial_wire.py): a frame
from the host is received, and its time in every device-side record taken,
when its last byte would have arrived on a real wire, and a frame to the host
reaches the pty when its last byte would have. `baudrate=None` is an instant
pty (no wire time), for tests that need none.

    python -m sim.couch [--baud B] [--speed-scale X] [--noise-mm N] [--heartbeat-timeout-ms N]

prints the device path on stdout and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from drivers import couch_protocol as cp
from drivers.event_loop import precise_event_loop
from safety.pose import AXES, ROTATION_AXES, Pose
from sim.serial_wire import SerialWire, wire_time_s

log = logging.getLogger("igrt.sim.couch")

# Default couch model of the simulator (docs/geometry.md "Limits and verdicts").
DEFAULT_TRAVEL: dict[str, tuple[float, float]] = {
    "lat": (-250.0, 250.0),
    "long": (-600.0, 600.0),
    "vert": (-400.0, 200.0),
    "yaw": (-95.0, 95.0),
    "pitch": (-3.0, 3.0),
    "roll": (-3.0, 3.0),
}
# A 10 mm shift takes ~1 s, a 1.5 deg pitch/roll ~2 s at speed_scale 1.
DEFAULT_MAX_VELOCITY: dict[str, float] = {
    "lat": 20.0, "long": 20.0, "vert": 20.0, "yaw": 2.0, "pitch": 1.0, "roll": 1.0,
}
DEFAULT_MAX_ACCEL: dict[str, float] = {
    "lat": 40.0, "long": 40.0, "vert": 40.0, "yaw": 4.0, "pitch": 2.0, "roll": 2.0,
}
# Roll range shrinks to +-2 deg while |pitch| > 2 deg (coupled limit).
DEFAULT_COUPLED_ROLL: tuple[float, float] | None = (2.0, 2.0)


class Executed(NamedTuple):
    t: float  # time.monotonic()
    kind: str  # TARGET / GO / STOP / JOG / RESET / FAULT
    details: dict[str, Any]


class Refused(NamedTuple):
    t: float
    kind: str  # the refused message type
    reason: str  # NAK reason, lower case


class MotionSample(NamedTuple):
    t: float
    pose: Pose  # true pose
    moving: tuple[bool, ...]


class Received(NamedTuple):
    t: float
    kind: str
    seq: int


@dataclass(slots=True)
class _Axis:
    name: str
    lo: float
    hi: float
    vmax: float
    amax: float
    pos: float = 0.0
    vel: float = 0.0
    mode: str = "idle"  # idle / position / jog / stopping
    target: float = 0.0
    jog_v: float = 0.0
    jog_until: float = 0.0
    decel: float = 0.0
    stalled: bool = False
    stall_detect: bool = True
    stall_since: float | None = None


@dataclass(slots=True)
class _Echo:
    echo_id: int
    target: tuple[float, ...]  # mm / deg, what GO will move to
    expires_at: float
    validity_ms: int


@dataclass
class _Injections:
    silence_from: float = 0.0
    silence_until: float = 0.0
    reply_delay_s: float = 0.0
    corrupt_tx: int = 0
    corrupt_rx: int = 0
    drop_tx: int = 0
    overshoot_mm: float = 0.0
    echo_offset_mm: float = 0.0
    stalled: dict[int, bool] = field(default_factory=dict)  # axis -> detect
    runaway: set[int] = field(default_factory=set)  # axes moving on their own
    pose_jump: dict[int, float] = field(default_factory=dict)  # axis -> delta, next report


def _clamp32(x: float) -> int:
    return max(cp.INT32_MIN, min(cp.INT32_MAX, round(x)))


def _fmt(values: tuple[float, ...]) -> dict[str, float]:
    return {a: round(v, 4) for a, v in zip(AXES, values)}


class SimCouchController:
    """The couch controller, device side, on a pty. Use in a running asyncio loop."""

    def __init__(
        self,
        *,
        travel: dict[str, tuple[float, float]] | None = None,
        max_velocity: dict[str, float] | None = None,
        max_accel: dict[str, float] | None = None,
        coupled_roll: tuple[float, float] | None = DEFAULT_COUPLED_ROLL,
        speed_scale: float = 1.0,
        noise_mm: float = 0.01,
        noise_deg: float = 0.001,
        heartbeat_timeout_ms: int = 250,
        status_push_ms: int = 20,
        tick_s: float = 0.005,
        max_validity_ms: int = 5000,
        jog_speed_fraction: float = 0.1,
        max_jog_ms: int = 2000,
        stop_decel_factor: float = 5.0,
        following_error_s: float = 0.3,
        partial_frame_timeout_ms: float = 20.0,
        initial_pose: Pose | None = None,
        seed: int | None = None,
        baudrate: int | None = cp.DEFAULT_BAUDRATE,
    ) -> None:
        if speed_scale <= 0:
            raise ValueError(f"speed scale {speed_scale} must be > 0")
        if not 1 <= heartbeat_timeout_ms <= 0xFFFF:
            raise ValueError(f"heartbeat timeout {heartbeat_timeout_ms} ms outside 1..65535 ms")
        travel = {**DEFAULT_TRAVEL, **(travel or {})}
        vmax = {**DEFAULT_MAX_VELOCITY, **(max_velocity or {})}
        amax = {**DEFAULT_MAX_ACCEL, **(max_accel or {})}
        # Scale time: velocities by k and accelerations by k^2 keep the profile's shape.
        self._axes = [
            _Axis(a, travel[a][0], travel[a][1], vmax[a] * speed_scale,
                  amax[a] * speed_scale**2)
            for a in AXES
        ]
        self.coupled_roll = coupled_roll
        self.noise_mm = noise_mm
        self.noise_deg = noise_deg
        self.heartbeat_timeout_s = heartbeat_timeout_ms / 1000.0
        self.status_push_s = status_push_ms / 1000.0
        self.tick_s = tick_s
        self.max_validity_ms = max_validity_ms
        self.jog_speed_fraction = jog_speed_fraction
        self.max_jog_ms = max_jog_ms
        self.stop_decel_factor = stop_decel_factor
        self.following_error_s = following_error_s
        self.partial_frame_timeout_s = partial_frame_timeout_ms / 1000.0
        self._rng = random.Random(seed)
        if initial_pose is not None:
            for ax, v in zip(self._axes, initial_pose.as_tuple()):
                ax.pos = v

        self.device_path: str = ""
        self.executed_commands: list[Executed] = []
        self.refused_commands: list[Refused] = []
        self.motion_log: collections.deque[MotionSample] = collections.deque(maxlen=100_000)
        # When a pushed STATUS carrying an injected pose jump actually left on the
        # wire (a jump made while the line is cut waits for the line to come back).
        self.pose_jumps_reported: list[float] = []
        self.frames_received: collections.deque[Received] = collections.deque(maxlen=10_000)

        self._state = cp.CtrlState.IDLE
        self._fault_code = cp.FaultCode.NONE
        self._fault_bits = 0
        self._echo: _Echo | None = None
        self._last_echo_id = 0
        self._echo_fate: dict[int, cp.NakReason] = {}  # why an old echo id is dead
        self._session_open = False
        self._last_rx = 0.0
        self._partial_since: float | None = None
        self._crc_errors = 0
        self._framing_errors = 0
        self._next_push = 0.0
        self._started_at = 0.0
        self._inj = _Injections()
        self._decoder = cp.FrameDecoder(priority_types=frozenset({cp.MsgType.STOP}))
        self._master = -1
        self._slave = -1
        self._tick_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._was_moving = False
        self._last_tick_at = 0.0
        self._state_listeners: list[Callable[[str], None]] = []
        # One wire per direction (full duplex): host -> controller, controller -> host.
        self.baudrate = baudrate
        self._rx_wire = SerialWire(baudrate, self._on_arrived)
        self._tx_wire = SerialWire(baudrate, self._tx_arrived)
        self._acting_at: float | None = None  # arrival of the frame being acted on

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        # Raw mode: no echo, no line editing, no XON/XOFF, so every byte passes.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.device_path = os.ttyname(self._slave)
        self._started_at = time.monotonic()
        self._loop.add_reader(self._master, self._on_readable)
        self._tick_task = asyncio.create_task(self._tick_loop(), name="sim-couch-tick")
        log.info("simulated couch controller on %s", self.device_path)

    async def stop(self) -> None:
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._master >= 0 and self._loop is not None:
            self._loop.remove_reader(self._master)
        self._rx_wire.close()
        self._tx_wire.close()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    # ------------------------------------------------------------ observation

    @property
    def pose(self) -> Pose:
        """True (noise-free) pose of the couch."""
        return Pose(*(ax.pos for ax in self._axes))

    def set_pose(self, pose: Pose) -> None:
        """Put the couch somewhere (tests, world set-up). Refused while axes move."""
        self._catch_up()
        if self.is_moving:
            raise RuntimeError("cannot set the simulated couch pose while axes are moving")
        for ax, v in zip(self._axes, pose.as_tuple()):
            ax.pos = v

    @property
    def state(self) -> str:
        return self._state.name

    @property
    def fault_code(self) -> str:
        return self._fault_code.name.lower()

    @property
    def is_moving(self) -> bool:
        return any(ax.mode != "idle" for ax in self._axes)

    @property
    def moving(self) -> tuple[bool, ...]:
        return tuple(ax.mode != "idle" for ax in self._axes)

    @property
    def echo_id(self) -> int:
        return self._echo.echo_id if self._echo else cp.NO_ECHO

    def executed(self, kind: str) -> list[Executed]:
        return [e for e in self.executed_commands if e.kind == kind]

    async def wait_halted(self, timeout_s: float) -> bool:
        """True once no axis moves (polled each tick); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.is_moving:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.tick_s)
        return True

    # ------------------------------------------------------------ fault injection

    def inject(
        self,
        *,
        stall_axis: str | None = None,
        link_silence_s: float | None = None,
        reply_delay_s: float | None = None,
        corrupt_next_n: int | None = None,
        corrupt_next_rx_n: int | None = None,
        overshoot_mm: float | None = None,
        echo_offset_mm: float | None = None,
    ) -> None:
        """Keyword front end to the named injection methods below."""
        if stall_axis is not None:
            self.stall_axis(stall_axis)
        if link_silence_s is not None:
            self.silence_link(link_silence_s)
        if reply_delay_s is not None:
            self.delay_replies(reply_delay_s)
        if corrupt_next_n is not None:
            self.corrupt_next_replies(corrupt_next_n)
        if corrupt_next_rx_n is not None:
            self.corrupt_next_received(corrupt_next_rx_n)
        if overshoot_mm is not None:
            self.overshoot(overshoot_mm)
        if echo_offset_mm is not None:
            self.offset_echo(echo_offset_mm)

    def stall_axis(self, axis: str, detect: bool = True) -> None:
        """The axis stops following commands. detect=True: the controller notices
        (FAULT following_error after following_error_s); detect=False: it
        believes the axis arrived (a silent miss only a read-back reveals)."""
        self._catch_up()
        i = AXES.index(axis)
        self._inj.stalled[i] = detect
        self._axes[i].stalled = True
        self._axes[i].stall_detect = detect

    def silence_link(self, seconds: float) -> None:
        """Cut the cable both ways for `seconds`: bytes in are lost, nothing goes out,
        and a frame on the wire at either edge of the cut is lost whole."""
        self._catch_up()
        self._inj.silence_from = time.monotonic()
        self._inj.silence_until = self._inj.silence_from + seconds

    def delay_replies(self, seconds: float) -> None:
        """Act on commands at once but send every reply `seconds` late."""
        self._catch_up()
        self._inj.reply_delay_s = seconds

    def corrupt_next_replies(self, n: int) -> None:
        """Flip one bit in each of the next n frames sent to the host."""
        self._catch_up()
        self._inj.corrupt_tx = n

    def drop_next_replies(self, n: int) -> None:
        """Lose the next n frames sent to the host (replies and pushed STATUS) whole,
        as a UART overrun would: unlike a corrupted frame, the host sees nothing."""
        self._catch_up()
        self._inj.drop_tx = n

    def corrupt_next_received(self, n: int) -> None:
        """Flip one bit in each of the next n frames received from the host
        (line noise); they then go through the real CRC check."""
        self._catch_up()
        self._inj.corrupt_rx = n

    def overshoot(self, mm: float) -> None:
        """Translation axes of later moves end `mm` past their target."""
        self._catch_up()
        self._inj.overshoot_mm = mm

    def offset_echo(self, mm: float) -> None:
        """Later echoes (and so GO) name lat + mm instead of the requested lat."""
        self._catch_up()
        self._inj.echo_offset_mm = mm

    def inject_runaway(self, axis: str, speed: float) -> None:
        """The controller starts moving `axis` on its own at `speed` (mm/s or deg/s,
        signed) and reports MOVING, with nothing commanded: a controller bug, not a
        broken drive, so STOP (or the controller's own faults) still stops it. It
        runs until then, or until the axis reaches its travel limit."""
        self._catch_up()
        i = AXES.index(axis)
        if not math.isfinite(speed) or speed == 0:
            raise ValueError(f"runaway speed {speed!r} must be a finite non-zero number")
        ax = self._axes[i]
        self._inj.runaway.add(i)
        ax.mode = "jog"
        ax.jog_v = speed
        ax.jog_until = math.inf
        ax.stall_since = None
        # Not an executed command (nothing was received): the motion_log records it.
        log.info("injected runaway: %s at %g", axis, speed)
        if self._state != cp.CtrlState.FAULT:
            self._set_state(cp.CtrlState.MOVING)

    def inject_pose_jump(self, axis: str, delta: float) -> None:
        """The reported pose has `axis` off by `delta` (mm or deg), as a faulty encoder
        would read, once: in every STATUS made until and including the next pushed one
        that reaches the host intact (so the jump reaches the host within one push
        period even while replies are delayed, and as soon as a cut line is back);
        `pose_jumps_reported` records when. The true pose is unchanged."""
        self._catch_up()
        i = AXES.index(axis)
        if not math.isfinite(delta):
            raise ValueError(f"pose jump {delta!r} must be a finite number")
        self._inj.pose_jump[i] = self._inj.pose_jump.get(i, 0.0) + delta

    def force_fault(self, code: str = "internal") -> None:
        """Drive the controller into FAULT with the named code."""
        self._catch_up()
        self._fault(cp.FaultCode[code.upper()], 0, time.monotonic())

    def clear_injections(self) -> None:
        self._catch_up()
        runaway = self._inj.runaway
        self._inj = _Injections()
        for i, ax in enumerate(self._axes):
            ax.stalled = False
            ax.stall_since = None
            if i in runaway and ax.mode == "jog" and math.isinf(ax.jog_until):
                # The runaway ends: the axis decelerates as at the end of a jog.
                ax.mode, ax.decel = "stopping", ax.amax

    # ------------------------------------------------------------ I/O

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no process has the slave open
            log.debug("pty read: %s", exc)
            return
        now = time.monotonic()
        if now < self._inj.silence_until:
            # The cable is cut: what the host writes now is lost (as for _send),
            # though its UART still spends the time sending it.
            self._rx_wire.occupy(len(data), now)
            return
        # Read at once, so taken as written now: the bytes then take the wire,
        # behind any the host wrote earlier, and count as received at their arrival.
        self._rx_wire.send(data, now)

    def _on_arrived(self, data: bytes, now: float) -> None:
        """`data` has fully arrived at `now`, the receive time the records carry."""
        if self._master < 0 or self._cut_off(len(data), now):
            return
        items = self._decoder.feed(data)
        self._partial_since = now if self._decoder.pending_bytes else None
        # The controller acts, and so answers, at the arrival, not when a late
        # delivery timer got round to it: replies and pushes start on the wire then.
        self._acting_at = now
        try:
            self._handle_items(items, now)
        finally:
            self._acting_at = None

    def _handle_items(self, items: list[cp.Frame | cp.DecodeError], now: float) -> None:
        for item in items:
            if isinstance(item, cp.Frame) and self._inj.corrupt_rx > 0:
                self._inj.corrupt_rx -= 1
                self._handle_items(self._corrupted(item), now)
            elif isinstance(item, cp.Frame):
                self._on_frame(item, now)
            elif item.kind == "bad_crc":
                self._crc_errors += 1
                # NAK only when LEN fits a host message type; the seq is then
                # likely the host's (never certain: the CRC failed).
                if item.plausible and item.type in cp.HOST_TYPES and item.seq is not None:
                    self._reply(item.seq, cp.Nak(item.type, cp.NakReason.BAD_CRC))
                    self._refused(now, cp.MsgType(item.type).name, cp.NakReason.BAD_CRC)
            else:
                self._framing_errors += 1

    def _corrupted(self, frame: cp.Frame) -> list[cp.Frame | cp.DecodeError]:
        raw = bytearray(cp.encode_raw(frame.seq, frame.type, frame.payload))
        k = cp.HEADER_LEN if frame.payload else len(raw) - 1  # first payload byte or CRC
        raw[k] ^= 0x04
        dec = cp.FrameDecoder()
        return dec.feed(raw) + dec.flush()

    def _send(self, frame: bytes, is_reply: bool) -> float | None:
        """Put a frame on the wire; when its last byte reaches the host, or None if
        the host cannot read it (the cable cut by a silence injection, the frame
        dropped or corrupted)."""
        now = time.monotonic()
        if now < self._inj.silence_until:
            return None
        if self._inj.drop_tx > 0:
            self._inj.drop_tx -= 1
            self._tx_wire.occupy(len(frame), now)  # sent, and lost at the host's UART
            return None
        intact = True
        if self._inj.corrupt_tx > 0:
            self._inj.corrupt_tx -= 1
            b = bytearray(frame)
            b[-1] ^= 0x10
            frame = bytes(b)
            intact = False
        if is_reply and self._inj.reply_delay_s > 0 and self._loop is not None:
            # The wire is taken when the late reply is written, not now: frames
            # sent meanwhile (pushes) go out first, as on a real line.
            self._loop.call_later(self._inj.reply_delay_s, self._tx_send, frame)
            arrival = now + self._inj.reply_delay_s  # at the earliest; only pushes use it
        else:
            arrival = self._tx_send(frame)
        return arrival if intact else None

    def _catch_up(self, now: float | None = None) -> None:
        """Act on every frame that has arrived by now, before time moves on: a frame's
        effects must come before a tick or an injection later than its arrival, as
        its record says (the delivery timers of a loaded loop fire late)."""
        now = time.monotonic() if now is None else now
        self._rx_wire.deliver_due(now)
        self._tx_wire.deliver_due(now)

    def _tx_send(self, frame: bytes) -> float:
        start = self._acting_at if self._acting_at is not None else time.monotonic()
        return self._tx_wire.send(frame, start)

    def _tx_arrived(self, frame: bytes, t: float) -> None:
        if not self._cut_off(len(frame), t):
            self._write(frame)

    def _cut_off(self, n_bytes: int, arrival: float) -> bool:
        """Were `n_bytes` arriving at `arrival` on the wire while the cable was cut?
        Then they are lost: a frame cut in two is garbage to the receiver."""
        begin = arrival - (wire_time_s(n_bytes, self.baudrate) if self.baudrate else 0.0)
        return begin < self._inj.silence_until and arrival >= self._inj.silence_from

    def _write(self, frame: bytes) -> None:
        if self._master < 0:
            return
        try:
            os.write(self._master, frame)
        except OSError as exc:  # buffer full or nobody listening: a UART just loses it
            log.debug("pty write dropped %d bytes: %s", len(frame), exc)

    def _reply(self, seq: int, msg: cp.Message) -> None:
        self._send(cp.encode(seq, msg), is_reply=True)

    def _push_status(self, now: float) -> None:
        arrival = self._send(cp.encode(cp.UNSOLICITED_SEQ, self._status_msg(now)),
                             is_reply=False)
        if arrival is not None and self._inj.pose_jump:
            # An injected jump lasts until a push carrying it went out intact;
            # recorded when its last byte reaches the host, the first moment
            # any host could know of it.
            self._inj.pose_jump = {}
            self.pose_jumps_reported.append(arrival)
        self._next_push = now + self.status_push_s

    # ------------------------------------------------------------ protocol

    def _on_frame(self, frame: cp.Frame, now: float) -> None:
        self._last_rx = now
        self._session_open = True
        kind = cp.MsgType(frame.type).name if frame.type in cp.PAYLOAD_LEN else hex(frame.type)
        if frame.type != cp.MsgType.HEARTBEAT:
            self.frames_received.append(Received(now, kind, frame.seq))
        if frame.type not in cp.HOST_TYPES:
            self._nak(frame.seq, frame.type, cp.NakReason.UNKNOWN_TYPE, now)
            return
        try:
            msg = cp.decode_message(frame)
        except cp.MessageError as exc:
            self._nak(frame.seq, frame.type, exc.reason, now)
            return
        seq = frame.seq
        if isinstance(msg, cp.Heartbeat):
            self._reply(seq, cp.Ack(cp.MsgType.HEARTBEAT))
        elif isinstance(msg, cp.StatusRequest):
            self._reply(seq, self._status_msg(now))
        elif isinstance(msg, cp.Stop):
            self._do_stop(seq, now)
        elif isinstance(msg, cp.Target):
            self._do_target(seq, msg, now)
        elif isinstance(msg, cp.Go):
            self._do_go(seq, msg, now)
        elif isinstance(msg, cp.Reset):
            self._do_reset(seq, now)
        elif isinstance(msg, cp.Jog):
            self._do_jog(seq, msg, now)

    def _nak(
        self,
        seq: int,
        msg_type: int,
        reason: cp.NakReason,
        now: float,
        field: int = cp.NakField.NONE,
        value: int = 0,
        limit: int = 0,
    ) -> None:
        self._reply(seq, cp.Nak(msg_type, reason, field, value, limit))
        kind = cp.MsgType(msg_type).name if msg_type in cp.PAYLOAD_LEN else hex(msg_type)
        self._refused(now, kind, reason)

    def _refused(self, now: float, kind: str, reason: cp.NakReason) -> None:
        self.refused_commands.append(Refused(now, kind, reason.name.lower()))
        log.info("refused %s: %s", kind, reason.name.lower())

    def _cancel_echo(self, fate: cp.NakReason) -> None:
        if self._echo is not None:
            self._echo_fate[self._echo.echo_id] = fate
            self._echo = None
            if self._state == cp.CtrlState.ARMED:
                self._set_state(cp.CtrlState.IDLE)

    def _do_stop(self, seq: int, now: float) -> None:
        was_moving = self.is_moving
        self._cancel_echo(cp.NakReason.CANCELLED_ECHO)
        for ax in self._axes:
            if ax.mode != "idle":
                ax.mode = "stopping"
                ax.decel = ax.amax * self.stop_decel_factor
        if self._state != cp.CtrlState.FAULT:
            self._set_state(cp.CtrlState.STOPPING if was_moving else cp.CtrlState.IDLE)
        self.executed_commands.append(Executed(now, "STOP", {"was_moving": was_moving}))
        self._reply(seq, cp.Ack(cp.MsgType.STOP))

    def _limit_violation(self, target: tuple[float, ...]) -> tuple[int, float, float] | None:
        for i, (ax, v) in enumerate(zip(self._axes, target)):
            if v < ax.lo:
                return i, v, ax.lo
            if v > ax.hi:
                return i, v, ax.hi
        if self.coupled_roll is not None:
            pitch_at, roll_max = self.coupled_roll
            pitch, roll = target[AXES.index("pitch")], target[AXES.index("roll")]
            if abs(pitch) > pitch_at and abs(roll) > roll_max:
                return AXES.index("roll"), roll, math.copysign(roll_max, roll)
        return None

    def _do_target(self, seq: int, msg: cp.Target, now: float) -> None:
        T = cp.MsgType.TARGET
        if self._state not in (cp.CtrlState.IDLE, cp.CtrlState.ARMED):
            self._nak(seq, T, cp.NakReason.BAD_STATE, now)
            return
        # A new TARGET always retires the previous echo, even if it is refused:
        # the host has changed its mind, so the old one must not run.
        self._cancel_echo(cp.NakReason.SUPERSEDED_ECHO)
        if not 1 <= msg.validity_ms <= self.max_validity_ms:
            lim = 1 if msg.validity_ms < 1 else self.max_validity_ms
            self._nak(seq, T, cp.NakReason.OUT_OF_RANGE, now, cp.NakField.VALIDITY_MS,
                      msg.validity_ms, lim)
            return
        target = cp.positions_from_wire(msg.positions)
        bad = self._limit_violation(target)
        if bad is not None:
            i, v, lim_v = bad
            k = cp.AXIS_SCALE[i]
            self._nak(seq, T, cp.NakReason.OUT_OF_RANGE, now, cp.NakField.AXIS_0 + i,
                      _clamp32(v * k), _clamp32(lim_v * k))
            return
        if self._inj.echo_offset_mm:
            target = (target[0] + self._inj.echo_offset_mm,) + target[1:]
        self._last_echo_id = self._last_echo_id % 0xFFFF + 1
        self._echo_fate.pop(self._last_echo_id, None)
        self._echo = _Echo(self._last_echo_id, target, now + msg.validity_ms / 1000.0,
                           msg.validity_ms)
        self.executed_commands.append(Executed(
            now, "TARGET", {"echo_id": self._echo.echo_id, "target": _fmt(target),
                            "validity_ms": msg.validity_ms}))
        wire = tuple(_clamp32(v * k) for v, k in zip(target, cp.AXIS_SCALE))
        # The echo carries the couch as it is now (the STATUS a push would carry:
        # positions and moving axes) and goes out before the ARMED push: the host
        # checks that pose before GO, and waits for no push to get it.
        at = self._status_msg(now)
        self._reply(seq, cp.TargetEchoMsg(self._echo.echo_id, wire, msg.validity_ms,  # type: ignore[arg-type]
                                          at.positions, at.moving_bits))
        self._set_state(cp.CtrlState.ARMED)

    def _do_go(self, seq: int, msg: cp.Go, now: float) -> None:
        G = cp.MsgType.GO
        if self._state not in (cp.CtrlState.IDLE, cp.CtrlState.ARMED):
            self._nak(seq, G, cp.NakReason.BAD_STATE, now)
            return
        echo = self._echo
        if echo is None or echo.echo_id != msg.echo_id:
            # Why this id cannot run: superseded, used, expired, cancelled or never issued.
            fate = self._echo_fate.get(msg.echo_id, cp.NakReason.UNKNOWN_ECHO)
            self._nak(seq, G, fate, now)
            return
        if now > echo.expires_at:
            self._cancel_echo(cp.NakReason.EXPIRED_ECHO)
            self._nak(seq, G, cp.NakReason.EXPIRED_ECHO, now)
            return
        # Single use: the echo dies the moment it starts a move. Straight from ARMED
        # to MOVING: _cancel_echo would report IDLE in between, a STATUS push that
        # is no state of a real controller and costs 4.3 ms of line before the ACK.
        self._echo_fate[echo.echo_id] = cp.NakReason.USED_ECHO
        self._echo = None
        over = self._inj.overshoot_mm
        for ax, tgt in zip(self._axes, echo.target):
            if over and ax.name not in ROTATION_AXES and abs(tgt - ax.pos) > 1e-9:
                tgt += math.copysign(over, tgt - ax.pos)
            ax.target = tgt
            ax.mode = "position" if abs(tgt - ax.pos) > 1e-9 else "idle"
            ax.stall_since = None
        self._set_state(cp.CtrlState.MOVING)
        self.executed_commands.append(Executed(
            now, "GO", {"echo_id": echo.echo_id, "target": _fmt(echo.target)}))
        self._reply(seq, cp.Ack(G))
        if not self.is_moving:  # already there: a move of zero length
            self._set_state(cp.CtrlState.IDLE)

    def _do_reset(self, seq: int, now: float) -> None:
        if self.is_moving:
            self._nak(seq, cp.MsgType.RESET, cp.NakReason.BAD_STATE, now)
            return
        self._cancel_echo(cp.NakReason.CANCELLED_ECHO)
        self._fault_code = cp.FaultCode.NONE
        self._fault_bits = 0
        self._set_state(cp.CtrlState.IDLE)
        self.executed_commands.append(Executed(now, "RESET", {}))
        self._reply(seq, cp.Ack(cp.MsgType.RESET))

    def _do_jog(self, seq: int, msg: cp.Jog, now: float) -> None:
        J = cp.MsgType.JOG
        if msg.axis >= len(self._axes):
            self._nak(seq, J, cp.NakReason.OUT_OF_RANGE, now, cp.NakField.AXIS_INDEX,
                      msg.axis, len(self._axes) - 1)
            return
        ax = self._axes[msg.axis]
        # A JOG of the axis that is already jogging continues it (the pendant is still
        # held); anything else moving, or any other state, refuses.
        continuing = self._state == cp.CtrlState.MOVING and ax.mode == "jog" and all(
            a is ax or a.mode == "idle" for a in self._axes)
        if not continuing and (self._state != cp.CtrlState.IDLE or self.is_moving):
            self._nak(seq, J, cp.NakReason.BAD_STATE, now)
            return
        k = cp.AXIS_SCALE[msg.axis]
        v = cp.from_wire(msg.velocity, k)
        vlim = ax.vmax * self.jog_speed_fraction
        if abs(v) > vlim:
            self._nak(seq, J, cp.NakReason.OUT_OF_RANGE, now,
                      cp.NakField.JOG_VELOCITY_0 + msg.axis, msg.velocity,
                      _clamp32(math.copysign(vlim, v) * k))
            return
        if not 1 <= msg.duration_ms <= self.max_jog_ms:
            lim = 1 if msg.duration_ms < 1 else self.max_jog_ms
            self._nak(seq, J, cp.NakReason.OUT_OF_RANGE, now, cp.NakField.DURATION_MS,
                      msg.duration_ms, lim)
            return
        ax.mode = "jog"
        ax.jog_v = v
        ax.jog_until = now + msg.duration_ms / 1000.0
        ax.stall_since = None
        self._set_state(cp.CtrlState.MOVING)
        self.executed_commands.append(Executed(
            now, "JOG", {"axis": ax.name, "velocity": v, "duration_ms": msg.duration_ms}))
        self._reply(seq, cp.Ack(J))

    def _fault(self, code: cp.FaultCode, axis_bits: int, now: float) -> None:
        self._fault_code = code
        self._fault_bits |= axis_bits
        self._cancel_echo(cp.NakReason.CANCELLED_ECHO)
        for ax in self._axes:
            if ax.mode != "idle":
                ax.mode = "stopping"
                ax.decel = ax.amax * self.stop_decel_factor
        self._set_state(cp.CtrlState.FAULT)
        self.executed_commands.append(Executed(now, "FAULT", {"code": code.name.lower()}))
        log.warning("couch controller FAULT: %s", code.name.lower())

    def _set_state(self, state: cp.CtrlState) -> None:
        if state == self._state:
            return
        log.debug("state %s -> %s", self._state.name, state.name)
        self._state = state
        self._push_status(time.monotonic())

    def _status_msg(self, now: float) -> cp.Status:
        moving = 0
        positions = []
        jump = self._inj.pose_jump
        lag = max(0.0, now - self._last_tick_at)
        for i, ax in enumerate(self._axes):
            if ax.mode != "idle":
                moving |= 1 << i
            sigma = self.noise_deg if ax.name in ROTATION_AXES else self.noise_mm
            noisy = (self._pose_at(ax, lag) + jump.get(i, 0.0)
                     + (self._rng.gauss(0.0, sigma) if sigma > 0 else 0.0))
            positions.append(_clamp32(noisy * cp.AXIS_SCALE[i]))
        echo = self._echo
        remaining = 0 if echo is None else max(0, min(0xFFFF, round((echo.expires_at - now) * 1000)))
        return cp.Status(
            state=self._state,
            fault_code=self._fault_code,
            moving_bits=moving,
            fault_bits=self._fault_bits,
            echo_id=echo.echo_id if echo else cp.NO_ECHO,
            echo_remaining_ms=remaining,
            positions=tuple(positions),  # type: ignore[arg-type]
            crc_errors=min(self._crc_errors, 0xFFFF),
            framing_errors=min(self._framing_errors, 0xFFFF),
            heartbeat_timeout_ms=round(self.heartbeat_timeout_s * 1000),
            uptime_ms=round((now - self._started_at) * 1000) & 0xFFFFFFFF,
        )

    # ------------------------------------------------------------ physics

    @staticmethod
    def _pose_at(ax: _Axis, lag: float) -> float:
        """The axis position a physics tick made now would give (nothing is changed).

        A real controller samples positions when it builds a STATUS; the simulator
        integrates motion in ticks that come late when the machine is loaded, and a
        late tick moves the axis by a whole stall's worth at once. Without this, a
        status made just before a late tick and one made just after it would show
        the couch leaping, which the host's plausibility check rightly calls
        impossible. Mirrors `_step_axis`, so the next tick agrees with the report.
        """
        if ax.mode == "idle" or lag <= 0 or (ax.stalled and ax.mode in ("position", "jog")):
            return ax.pos
        if ax.mode == "position":
            d = ax.target - ax.pos
            if abs(d) < 1e-9:
                return ax.pos
            v_des = math.copysign(min(ax.vmax, math.sqrt(2.0 * ax.amax * abs(d))), d)
            dv = ax.amax * lag
            step = min(max(v_des, ax.vel - dv), ax.vel + dv) * lag
            return ax.target if abs(step) >= abs(d) else ax.pos + step
        if ax.mode == "jog":
            dv = ax.amax * lag
            v = min(max(ax.jog_v, ax.vel - dv), ax.vel + dv)
            return min(max(ax.pos + v * lag, ax.lo), ax.hi)
        dv = ax.decel * lag  # stopping
        if abs(ax.vel) <= dv:
            return ax.pos
        return ax.pos + (ax.vel - math.copysign(dv, ax.vel)) * lag

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self._tick(now, now - last)
            last = now

    def _tick(self, now: float, dt: float) -> None:
        self._catch_up(now)
        self._last_tick_at = now
        if (self._partial_since is not None
                and now - self._partial_since > self.partial_frame_timeout_s):
            # A frame that stopped half way is given up so the next one is seen.
            self._partial_since = None
            self._handle_items(self._decoder.flush(), now)
        if (self._session_open and self._state != cp.CtrlState.FAULT
                and now - self._last_rx > self.heartbeat_timeout_s):
            self._session_open = False
            self._fault(cp.FaultCode.HEARTBEAT_LOST, 0, now)
        if self._echo is not None and now > self._echo.expires_at:
            self._cancel_echo(cp.NakReason.EXPIRED_ECHO)
        moving_before = self.is_moving
        for i, ax in enumerate(self._axes):
            self._step_axis(i, ax, now, dt)
        moving = self.is_moving
        if moving or moving_before:
            self.motion_log.append(MotionSample(now, self.pose, self.moving))
        if moving_before and not moving and self._state in (
                cp.CtrlState.MOVING, cp.CtrlState.STOPPING):
            self._set_state(cp.CtrlState.IDLE)
        elif moving_before and not moving or moving and now >= self._next_push:
            self._push_status(now)

    def _step_axis(self, i: int, ax: _Axis, now: float, dt: float) -> None:
        if ax.mode == "idle":
            return
        if ax.stalled and ax.mode in ("position", "jog"):
            ax.vel = 0.0
            if not ax.stall_detect:
                ax.mode = "idle"  # the controller believes it arrived
            elif ax.stall_since is None:
                ax.stall_since = now
            elif now - ax.stall_since > self.following_error_s:
                self._fault(cp.FaultCode.FOLLOWING_ERROR, 1 << i, now)
            return
        if ax.mode == "position":
            d = ax.target - ax.pos
            v_des = math.copysign(min(ax.vmax, math.sqrt(2.0 * ax.amax * abs(d))), d)
            dv = ax.amax * dt
            v = min(max(v_des, ax.vel - dv), ax.vel + dv)
            step = v * dt
            if abs(step) >= abs(d) or abs(d) < 1e-9:
                ax.pos, ax.vel, ax.mode = ax.target, 0.0, "idle"
            else:
                ax.pos += step
                ax.vel = v
        elif ax.mode == "jog":
            if now >= ax.jog_until:
                ax.mode, ax.decel = "stopping", ax.amax
                return
            dv = ax.amax * dt
            ax.vel = min(max(ax.jog_v, ax.vel - dv), ax.vel + dv)
            ax.pos += ax.vel * dt
            if not ax.lo <= ax.pos <= ax.hi:
                # A jog ends at the controller's travel limit.
                ax.pos = min(max(ax.pos, ax.lo), ax.hi)
                ax.vel, ax.mode = 0.0, "idle"
        elif ax.mode == "stopping":
            dv = ax.decel * dt
            if abs(ax.vel) <= dv:
                ax.vel, ax.mode = 0.0, "idle"
            else:
                ax.vel -= math.copysign(dv, ax.vel)
                ax.pos += ax.vel * dt
        if (ax.mode != "idle" and not ax.lo - 1e-9 <= ax.pos <= ax.hi + 1e-9
                and self._state != cp.CtrlState.FAULT):
            self._fault(cp.FaultCode.TRAVEL_LIMIT, 1 << i, now)


# ---------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sim.couch",
        description="Simulated couch controller on a pty; prints the serial device path.",
    )
    p.add_argument("--speed-scale", type=float, default=1.0,
                   help="multiply axis speeds (accelerations by its square); default 1")
    p.add_argument("--noise-mm", type=float, default=0.01,
                   help="sigma of reported translation noise, mm; default 0.01")
    p.add_argument("--noise-deg", type=float, default=0.001,
                   help="sigma of reported rotation noise, deg; default 0.001")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=250,
                   help="host silence before FAULT(heartbeat_lost), ms; default 250")
    p.add_argument("--seed", type=int, default=None, help="noise seed")
    p.add_argument("--baud", type=int, default=cp.DEFAULT_BAUDRATE,
                   help="line speed, 8N1: frames take their real time on the wire; "
                   f"0 = instant pty; default {cp.DEFAULT_BAUDRATE} (igrtd's default)")
    p.add_argument("--link", type=Path, default=None,
                   help="also make a stable symlink to the pty here (for igrtd's config)")
    p.add_argument("--log-level", default="WARNING", help="stderr log level; default WARNING")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    sim = SimCouchController(
        speed_scale=args.speed_scale,
        noise_mm=args.noise_mm,
        noise_deg=args.noise_deg,
        heartbeat_timeout_ms=args.heartbeat_timeout_ms,
        seed=args.seed,
        baudrate=args.baud or None,
    )
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    async with sim:
        if args.link is not None:
            # The pty name changes at every start; a fixed link keeps igrtd's config stable.
            args.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.link.with_name(args.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(sim.device_path)
            tmp.replace(args.link)
        sys.stdout.write(sim.device_path + "\n")
        sys.stdout.flush()
        try:
            await done.wait()
        finally:
            if args.link is not None:
                args.link.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        with asyncio.Runner(loop_factory=precise_event_loop) as runner:
            runner.run(_serve(args))
    except ValueError as exc:
        print(f"sim.couch: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
