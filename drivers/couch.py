"""Host side of the couch controller serial link (docs/protocols/couch-serial.md).

`CouchClient` sends exactly what it is told and reports what it sees: no
limits, no workflow, no decisions (those live in safety/ and daemon/).

Concurrency model: every frame is written whole, synchronously, from the event
loop thread, and replies are matched to requests by sequence number. There is
no request queue and no lock, so a STOP is never stuck behind a TARGET or GO
that is still waiting for its answer. TARGET and GO are never retransmitted:
when their reply does not come in time the caller gets CouchTimeout and
decides; a late reply is logged and dropped, never acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import serial_asyncio_fast

from drivers import couch_protocol as cp
from drivers.couch_messages import (
    AXIS_COUNT,
    FAULT_NAMES,
    STATE_NAMES,
    CouchError,
    CouchEvent,
    CouchLinkLost,
    CouchRefused,
    CouchStatus,
    CouchTimeout,
    FrameTap,
    LinkEvent,
    Listener,
    TargetEcho,
    bits,
    name_of,
    pose_from_wire,
    pose_to_wire,
    refusal_from_nak,
)
from drivers.cuttable_sleep import CuttableSleep
from safety.pose import AXES, UNITS, Pose

log = logging.getLogger("igrt.couch")

# The names callers import from here (drivers.couch stays the one import for the couch).
__all__ = ["AXIS_COUNT", "CouchClient", "CouchError", "CouchEvent", "CouchLinkLost",
           "CouchRefused", "CouchStatus", "CouchTimeout", "FrameTap", "LinkEvent", "Listener",
           "TargetEcho", "refusal_from_nak"]

@dataclass(slots=True)
class _Pending:
    type: int
    future: asyncio.Future[Any]


class _PortGone(Exception):
    """Internal: ends the task group when the serial port goes away."""


class CouchClient:
    """asyncio client for the couch controller on any serial device path."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = cp.DEFAULT_BAUDRATE,
        heartbeat_interval_s: float = 0.05,
        reply_timeout_s: float = 0.25,
        link_timeout_s: float | None = None,
        status_retries: int = 1,
        stop_retries: int = 2,
        tap: FrameTap | None = None,
    ) -> None:
        """heartbeat_interval_s=0 sends no heartbeat (diagnostics and tests only:
        the controller will fault). link_timeout_s defaults to max(0.25 s,
        5 heartbeat intervals) and is off when heartbeats are off. `tap` (also
        settable later as `.tap`) is called with every frame written and every
        good frame received; it must be quick and must not block (a session
        recorder's queue), and it is never allowed to break the link."""
        self.port = port
        self.baudrate = baudrate
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reply_timeout_s = reply_timeout_s
        if link_timeout_s is None and heartbeat_interval_s > 0:
            link_timeout_s = max(0.25, 5 * heartbeat_interval_s)
        self.link_timeout_s = link_timeout_s
        self.status_retries = status_retries
        self.stop_retries = stop_retries

        self.latest_status: CouchStatus | None = None
        self.last_rx: float = 0.0
        self.link_ok: bool = False

        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._decoder = cp.FrameDecoder()
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._listeners: list[Listener] = []
        self._closed = True
        self._heartbeat_sleep = CuttableSleep()
        self.tap = tap

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the port, start heartbeat and reader, and check the controller answers."""
        if not self._closed:
            return
        try:
            self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                url=self.port, baudrate=self.baudrate, exclusive=True
            )
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            raise CouchLinkLost(f"cannot open couch serial port {self.port}: {exc}") from None
        self._closed = False
        self._decoder = cp.FrameDecoder()
        self.last_rx = time.monotonic()
        self._runner = asyncio.create_task(self._run(), name=f"couch-link {self.port}")
        try:
            await self.status()
        except CouchError as exc:
            await self.close()
            raise CouchLinkLost(f"couch controller on {self.port} does not answer: {exc}") from None
        log.info("couch controller connected on %s", self.port)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._fail_pending(CouchLinkLost("couch client closed"))
        writer, self._writer = self._writer, None
        self._reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        self._set_link(False, "closed")
        log.info("couch link on %s closed", self.port)

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call `callback(CouchStatus | LinkEvent)` on every status and link change.

        Callbacks run in the reader; they must be quick and must not block.
        Returns a function that removes the listener.
        """
        self._listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    # ------------------------------------------------------------ commands

    async def status(self, retries: int | None = None) -> CouchStatus:
        """Ask for STATUS. Reading is harmless, so a lost reply is retried."""
        attempts = 1 + (self.status_retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                result: CouchStatus = await self._request(cp.StatusRequest())
                return result
            except CouchTimeout:
                if attempt + 1 == attempts:
                    raise
                log.warning("couch STATUS reply missing, asking again")
        raise AssertionError("unreachable")

    async def send_target(self, pose: Pose, validity_ms: int) -> TargetEcho:
        """TARGET -> TARGET_ECHO. Never retransmitted; compare the echo before GO."""
        return await self.start_target(pose, validity_ms)

    def start_target(self, pose: Pose, validity_ms: int) -> asyncio.Future[TargetEcho]:
        """`send_target` with TARGET written now, in the caller's event-loop step; the
        future gives the echo. The caller may work while TARGET is on the wire (the
        MotionGate makes its apply-once claim then); cancelling it drops the echo, and
        the target the controller armed expires after `validity_ms` without a GO."""
        if not isinstance(validity_ms, int) or not 1 <= validity_ms <= 0xFFFF:
            raise ValueError(f"validity {validity_ms!r} ms is outside 1..65535 ms")
        msg = cp.Target(pose_to_wire(pose), validity_ms)
        seq, fut = self._send(msg)
        task = asyncio.ensure_future(self._reply(msg, seq, fut))
        # Cancelled before it ran, `_reply` would never clear its sequence number.
        task.add_done_callback(lambda _: self._pending.pop(seq, None))
        return task

    async def go(self, echo_id: int) -> None:
        """GO naming an echo. Never retransmitted. CouchRefused if NAKed."""
        if not isinstance(echo_id, int) or not 1 <= echo_id <= 0xFFFF:
            raise ValueError(f"echo id {echo_id!r} is outside 1..65535")
        await self._request(cp.Go(echo_id))

    async def stop(self) -> None:
        """STOP all axes. Written at once (nothing to wait behind); resent if unanswered.

        Repeating STOP is safe, unlike repeating a motion command.
        """
        attempts = 1 + self.stop_retries
        for attempt in range(attempts):
            try:
                await self._request(cp.Stop())
                return
            except CouchTimeout:
                if attempt + 1 == attempts:
                    raise
                log.warning("couch STOP not acknowledged, sending STOP again")

    def stop_nowait(self) -> bool:
        """Write a STOP frame now, without waiting for the ACK (event-loop thread only).

        Returns False if there is no open port to write to.
        """
        if self._writer is None or self._writer.transport.is_closing():
            log.error("STOP not sent: couch serial port %s is not open", self.port)
            return False
        frame = cp.encode(self._next_seq(), cp.Stop())
        self._writer.write(frame)  # the frame first: a tap never delays a STOP
        self._tapped("tx", frame)
        log.info("STOP written to couch controller (no wait)")
        return True

    async def reset(self) -> None:
        """RESET: clear a FAULT. Never causes motion."""
        await self._request(cp.Reset())

    async def jog(self, axis: str | int, velocity: float, duration_ms: int) -> None:
        """Service jog: one axis at `velocity` (mm/s or deg/s) for duration_ms."""
        if isinstance(axis, str):
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} (expected one of {', '.join(AXES)})")
            index = AXES.index(axis)
        else:
            index = axis
        if not 0 <= index < AXIS_COUNT:
            raise ValueError(f"axis index {index} is outside 0..{AXIS_COUNT - 1}")
        name = AXES[index]
        wire_v = cp.to_wire(velocity, cp.AXIS_SCALE[index], f"{name} jog velocity",
                            f"{UNITS[name]}/s")
        if not isinstance(duration_ms, int) or not 1 <= duration_ms <= 0xFFFF:
            raise ValueError(f"jog duration {duration_ms!r} ms is outside 1..65535 ms")
        await self._request(cp.Jog(index, wire_v, duration_ms))

    # ------------------------------------------------------------ internals

    def _next_seq(self) -> int:
        for _ in range(255):
            self._seq = self._seq % 255 + 1  # 1..255; 0 is the controller's
            if self._seq not in self._pending:
                return self._seq
        raise CouchError("255 couch requests outstanding; refusing to reuse a sequence number")

    def _write(self, frame: bytes) -> None:
        if self._writer is None or self._writer.transport.is_closing():
            raise CouchLinkLost(f"couch serial port {self.port} is not open")
        self._writer.write(frame)
        self._tapped("tx", frame)

    def _tapped(self, direction: str, frame: bytes) -> None:
        tap = self.tap
        if tap is None:
            return
        try:
            tap(direction, frame)
        except Exception:  # an observer's bug must not kill the link
            log.exception("couch frame tap failed")

    async def _request(self, msg: cp.Message) -> Any:
        seq, fut = self._send(msg)
        return await self._reply(msg, seq, fut)

    def _send(self, msg: cp.Message) -> tuple[int, asyncio.Future[Any]]:
        """Write `msg` now under a fresh sequence number; the future takes its reply."""
        seq = self._next_seq()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = _Pending(msg.TYPE, fut)
        try:
            self._write(cp.encode(seq, msg))
        except BaseException:
            self._pending.pop(seq, None)
            raise
        return seq, fut

    async def _reply(self, msg: cp.Message, seq: int, fut: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                return await fut
        except TimeoutError:
            name = msg.TYPE.name
            log.warning("couch %s seq %d: no reply within %.0f ms", name, seq,
                        self.reply_timeout_s * 1000)
            raise CouchTimeout(
                f"couch controller did not answer {name} within "
                f"{self.reply_timeout_s * 1000:.0f} ms"
            ) from None
        finally:
            self._pending.pop(seq, None)

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop())
                if self.heartbeat_interval_s > 0:
                    tg.create_task(self._heartbeat_loop())
                if self.link_timeout_s:
                    tg.create_task(self._link_watch_loop())
        except* _PortGone:
            pass
        except* Exception as eg:  # a bug must not leave the link half-alive and silent
            log.error("couch link tasks failed", exc_info=eg)
            self._set_link(False, f"couch driver failure: {eg.exceptions[0]!r}")
            self._fail_pending(CouchLinkLost("couch driver failure"))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        while True:
            try:
                data = await reader.read(4096)
            except OSError as exc:
                reason = f"couch serial port error: {exc}"
                data = b""
            else:
                reason = "couch serial port closed"
            if not data:
                self._set_link(False, reason)
                self._fail_pending(CouchLinkLost(reason))
                raise _PortGone(reason)
            self._on_bytes(data)

    def set_heartbeat_interval(self, interval_s: float) -> None:
        """Send heartbeats every `interval_s` (> 0) from now on; a shorter interval
        takes effect at once. Which interval applies is the caller's decision."""
        if not interval_s > 0:  # also refuses NaN
            raise ValueError(f"heartbeat interval {interval_s} s must be > 0")
        shorter = interval_s < self.heartbeat_interval_s
        self.heartbeat_interval_s = interval_s
        if shorter:
            self._heartbeat_sleep.cut()

    async def _heartbeat_loop(self) -> None:
        frame_for = cp.encode
        hb = cp.Heartbeat()
        while True:
            writer = self._writer
            if writer is not None and not writer.transport.is_closing():
                frame = frame_for(self._next_seq(), hb)
                writer.write(frame)
                self._tapped("tx", frame)
            # set_heartbeat_interval() may cut it short
            await self._heartbeat_sleep.sleep(self.heartbeat_interval_s)

    async def _link_watch_loop(self) -> None:
        assert self.link_timeout_s is not None
        timeout = self.link_timeout_s
        while True:
            # Wake when the link would time out, not on a fixed tick: frames keep
            # moving the deadline, so an idle link costs a wake-up or two per timeout.
            # Never sooner than timeout / 5 (a frame just missed is not a reason to spin).
            wait = self.last_rx + timeout - time.monotonic()
            await asyncio.sleep(max(wait + 0.001, timeout / 5))
            silent = time.monotonic() - self.last_rx
            if self.link_ok and silent > timeout:
                self._set_link(False, f"no frame from couch controller for {silent * 1000:.0f} ms")

    def _set_link(self, ok: bool, reason: str) -> None:
        if ok == self.link_ok:
            return
        self.link_ok = ok
        if ok:
            log.info("couch link up: %s", reason)
        else:
            log.warning("couch link lost: %s", reason)
        self._notify(LinkEvent(ok, reason, time.monotonic()))

    def _fail_pending(self, exc: CouchError) -> None:
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(exc)

    def _notify(self, event: CouchEvent) -> None:
        for cb in tuple(self._listeners):
            try:
                cb(event)
            except Exception:  # a listener's bug must not kill the link
                log.exception("couch listener %r failed", cb)

    def _on_bytes(self, data: bytes) -> None:
        now = time.monotonic()
        for item in self._decoder.feed(data):
            if isinstance(item, cp.DecodeError):
                log.debug("couch rx: dropped %d byte(s): %s", item.nbytes, item.kind)
                continue
            self.last_rx = now
            if self.tap is not None:
                self._tapped("rx", cp.encode_raw(item.seq, item.type, item.payload))
            if not self.link_ok:
                self._set_link(True, "frames from couch controller")
            try:
                msg = cp.decode_message(item)
            except cp.MessageError as exc:
                log.warning("couch rx: unusable frame seq %d: %s", item.seq, exc)
                continue
            self._dispatch(item.seq, msg, now)

    def _resolve(self, seq: int, req_type: int, result: Any = None,
                 exc: BaseException | None = None) -> bool:
        p = self._pending.get(seq)
        if p is None or p.type != req_type or p.future.done():
            return False
        if exc is not None:
            p.future.set_exception(exc)
        else:
            p.future.set_result(result)
        return True

    def _dispatch(self, seq: int, msg: cp.Message, now: float) -> None:
        if isinstance(msg, cp.Status):
            st = CouchStatus(
                state=STATE_NAMES.get(msg.state) or name_of(msg.state, cp.CtrlState),
                pose=pose_from_wire(msg.positions),
                moving=bits(msg.moving_bits),
                faults=bits(msg.fault_bits),
                fault_code=FAULT_NAMES.get(msg.fault_code) or f"unknown({msg.fault_code})",
                echo_id=msg.echo_id,
                echo_remaining_ms=msg.echo_remaining_ms,
                crc_errors=msg.crc_errors,
                framing_errors=msg.framing_errors,
                heartbeat_timeout_ms=msg.heartbeat_timeout_ms,
                uptime_ms=msg.uptime_ms,
                received_at=now,
            )
            self.latest_status = st
            if seq != cp.UNSOLICITED_SEQ:
                self._resolve(seq, cp.MsgType.STATUS_REQ, st)
            self._notify(st)
        elif isinstance(msg, cp.Ack):
            if not self._resolve(seq, msg.acked_type) and msg.acked_type != cp.MsgType.HEARTBEAT:
                log.info("couch rx: ACK of %s seq %d matches no waiting request",
                         name_of(msg.acked_type, cp.MsgType), seq)
        elif isinstance(msg, cp.TargetEchoMsg):
            echo = TargetEcho(msg.echo_id, pose_from_wire(msg.positions), msg.validity_ms, now,
                              pose_from_wire(msg.armed_at), bits(msg.moving_bits))
            if not self._resolve(seq, cp.MsgType.TARGET, echo):
                log.warning("couch rx: late TARGET_ECHO %d (seq %d) discarded; "
                            "it will expire unused", msg.echo_id, seq)
        elif isinstance(msg, cp.Nak):
            refusal = refusal_from_nak(msg)
            if self._resolve(seq, msg.nacked_type, exc=refusal):
                log.warning("%s", refusal)
            else:
                log.warning("couch rx: NAK matches no waiting request (seq %d): %s", seq, refusal)
        else:
            log.warning("couch rx: unexpected %s from controller", type(msg).__name__)
