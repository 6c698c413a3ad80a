"""The room PLC's Modbus TCP client: connection, polling cadence and coil writes.

Reads the status block once per poll cycle and hands every answer to the
fail-safe picture it inherits (`drivers.plc_picture.PlcPicture`); a failed or
malformed answer is a link fault there. Reconnects with its own back-off, so
link state and timing stay in one place. Decides nothing: the daemon does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.cuttable_sleep import CuttableSleep
from drivers.plc_picture import STALE_POLL_CYCLES, PlcPicture, PlcSnapshot
from drivers.plc_registers import (
    ARMS,
    COILS,
    DEFAULT_DEVICE_ID,
    REGISTER_MAP_VERSION,
    STATUS_BLOCK_COUNT,
    StatusRegister,
)

# The logger keeps the name it had before the driver was split into modules, so
# log filters and what operators grep for stay the same.
log = logging.getLogger("drivers.plc")

_COIL_ADDRESS = {name: i for i, name in enumerate(COILS)}

# Sees the wire values: ("read", 0, the status block every good poll) and
# ("write", first coil address, 0/1 values) for every coil write sent.
PlcTap = Callable[[str, int, list[int]], None]
# fast: motion may happen; idle: a session is open; standby: no session, nothing can
# move before the room has passed through a fast-rate state.
PollRate = Literal["fast", "idle", "standby"]


class PlcError(Exception):
    """Base class of room PLC errors; str() is one line."""


class PlcLinkError(PlcError):
    """The PLC could not be reached (not connected, no answer in time)."""


class PlcWriteError(PlcError):
    """The PLC refused a write with a Modbus exception response."""


def _check_config(host: str, port: int, poll_interval_s: float, idle_poll_interval_s: float,
                  standby_poll_interval_s: float, heartbeat_stale_s: float,
                  request_timeout_s: float, device_id: int) -> None:
    if not host:
        raise ValueError("room PLC host is empty")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"room PLC port {port!r} is out of range 1..65535")
    if not 0 <= device_id <= 247:
        raise ValueError(f"room PLC device id {device_id} is out of range 0..247")
    if not 0.0005 <= poll_interval_s <= 0.1:
        raise ValueError(f"room PLC poll interval {poll_interval_s} s is out of range 0.0005..0.1 s")
    if not poll_interval_s <= idle_poll_interval_s <= 1.0:
        raise ValueError(
            f"room PLC idle poll interval {idle_poll_interval_s} s is out of range "
            f"{poll_interval_s}..1.0 s"
        )
    if not idle_poll_interval_s <= standby_poll_interval_s <= 1.0:
        raise ValueError(
            f"room PLC standby poll interval {standby_poll_interval_s} s is out of range "
            f"{idle_poll_interval_s}..1.0 s"
        )
    if heartbeat_stale_s < STALE_POLL_CYCLES * idle_poll_interval_s:
        raise ValueError(
            f"room PLC heartbeat staleness limit {heartbeat_stale_s} s is below 4 x the idle poll "
            f"interval ({4 * idle_poll_interval_s} s)"
        )
    if request_timeout_s <= 0:
        raise ValueError(f"room PLC request timeout {request_timeout_s} s must be > 0 s")


class RoomPlcClient(PlcPicture):
    """Async context manager polling the room PLC and publishing interlock changes.

    `poll_interval_s` is the rate while motion may happen; `idle_poll_interval_s`
    (default: the same) is used while `set_fast_poll(False)`, so an idle daemon
    need not pay for 400 requests a second; `standby_poll_interval_s` (default:
    the idle one) while `set_poll_rate("standby")`, where the staleness limit
    stretches to STALE_POLL_CYCLES of it. Which rate applies is the daemon's
    decision.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        poll_interval_s: float = 0.0025,
        idle_poll_interval_s: float | None = None,
        standby_poll_interval_s: float | None = None,
        heartbeat_stale_s: float = 0.1,
        request_timeout_s: float | None = None,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        device_id: int = DEFAULT_DEVICE_ID,
    ) -> None:
        idle = poll_interval_s if idle_poll_interval_s is None else idle_poll_interval_s
        standby = idle if standby_poll_interval_s is None else standby_poll_interval_s
        # A request slower than the staleness limit can only deliver stale data.
        timeout = heartbeat_stale_s if request_timeout_s is None else request_timeout_s
        _check_config(host, port, poll_interval_s, idle, standby, heartbeat_stale_s, timeout,
                      device_id)
        super().__init__(heartbeat_stale_s)
        self.host = host
        self.port = port
        self._intervals: dict[PollRate, float] = {
            "fast": poll_interval_s, "idle": idle, "standby": standby}
        self._rate: PollRate = "fast"
        self._timeout = timeout
        self._reconnect_min = reconnect_min_s
        self._reconnect_max = reconnect_max_s
        self._device_id = device_id
        self._stopping = False

        self._client: AsyncModbusTcpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._sleep = CuttableSleep()
        # An observer (a session recorder); must be quick and must not block.
        self.tap: PlcTap | None = None

    # ------------------------------------------------------------------ life
    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"room-plc {self.host}:{self.port}")
        self._task.add_done_callback(self._on_task_done)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping = True
        task, self._task = self._task, None
        # Python 3.11's asyncio.wait_for (used inside pymodbus) can swallow a
        # cancellation that races with a reply, so cancel until the task is done.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._close_client()
        for _, fut in self._fresh_waiters:
            if not fut.done():
                fut.set_exception(PlcLinkError("room PLC client closed"))
        self._fresh_waiters.clear()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._stopping:
            # A bug in the poll loop must not leave a safe-looking picture behind.
            log.error("room PLC poll task died: %r", exc, exc_info=exc)
            self._set_link_fault(f"room PLC poll task died: {exc!r}")

    # ------------------------------------------------------------- public API
    def set_fast_poll(self, fast: bool) -> None:
        """Poll at `poll_interval_s` (True) or `idle_poll_interval_s` (False)."""
        self.set_poll_rate("fast" if fast else "idle")

    def set_poll_rate(self, rate: PollRate) -> None:
        """Poll at the motion, idle or standby interval from the next read on."""
        interval = self._intervals[rate]
        faster = interval < self.poll_interval_s
        self._rate = rate
        if faster:
            # The limit shortens with the first read at this rate (_on_status).
            self._sleep.cut()  # cut a slower rate's sleep short
        else:
            # Longer at once: the next read may now be this far away.
            self._extend_stale_limit(interval)

    @property
    def poll_interval_s(self) -> float:
        return self._intervals[self._rate]

    async def fresh_snapshot(self, timeout_s: float = 0.1) -> PlcSnapshot:
        """A snapshot built from a read *sent after* this call (nothing older counts)."""
        fut: asyncio.Future[PlcSnapshot] = asyncio.get_running_loop().create_future()
        entry = (time.monotonic(), fut)
        self._fresh_waiters.append(entry)
        # Read now, not after the rest of a (standby-length) wait.
        self._sleep.cut()
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            raise PlcLinkError(
                f"no fresh answer from room PLC {self.host}:{self.port} within {timeout_s} s"
            ) from None
        finally:
            if entry in self._fresh_waiters:
                self._fresh_waiters.remove(entry)

    async def set_beam_hold(self, hold: bool) -> None:
        await self._write_coils("beam_hold", [hold])

    async def set_motion_permit_lamp(self, on: bool) -> None:
        await self._write_coils("motion_permit_lamp", [on])

    async def command_arms(self, extend: bool) -> None:
        """Drive both imager arms: extend (True) or retract to parked (False), one request."""
        await self._write_coils("kv_source_extend", [extend, extend])

    async def command_arm(self, arm: str, extend: bool) -> None:
        if arm not in ARMS:
            raise ValueError(f"unknown imager arm {arm!r}; known: {', '.join(ARMS)}")
        await self._write_coils(f"{arm}_extend", [extend])

    # ------------------------------------------------------------- poll loop
    async def _run(self) -> None:
        while not self._stopping:
            if await self._connect():
                await self._poll_connected()
            self._close_client()
            self._failures += 1
            delay = min(self._reconnect_max, self._reconnect_min * 2 ** (self._failures - 1))
            log.debug("room PLC reconnect in %.3f s (failure %d)", delay, self._failures)
            await asyncio.sleep(delay)

    async def _connect(self) -> bool:
        self._client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self._timeout,
            retries=0,
            reconnect_delay=0,  # back-off is ours, so link state and timing stay in one place
            trace_connect=self._on_connection_event,
            name="room-plc",
        )
        if await self._client.connect():
            log.info("room PLC connected at %s:%d", self.host, self.port)
            return True
        self._set_link_fault(f"cannot connect to room PLC at {self.host}:{self.port}")
        return False

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _on_connection_event(self, connected: bool) -> None:
        if not connected:
            # Tell listeners now; the pending read only fails at its timeout.
            self._set_link_fault(f"connection to room PLC {self.host}:{self.port} lost")

    async def _poll_connected(self) -> None:
        assert self._client is not None
        client = self._client
        next_at = time.monotonic()
        while not self._stopping:
            interval = self.poll_interval_s  # the rate this read is taken at
            sent = time.monotonic()
            try:
                rr = await client.read_holding_registers(
                    0, count=STATUS_BLOCK_COUNT, device_id=self._device_id
                )
            except ModbusException as exc:
                self._set_link_fault(f"room PLC read failed: {_one_line(exc)}")
                return
            recv = time.monotonic()
            if rr.isError():
                code = getattr(rr, "exception_code", "?")
                # Illegal data address to the status block read: most likely a PLC
                # programmed with an older, shorter map (version 2 had 9 registers).
                hint = (f" (illegal data address: is its status block shorter than map "
                        f"version {REGISTER_MAP_VERSION}'s {STATUS_BLOCK_COUNT} registers?)"
                        if code == 2 else "")
                self._set_link_fault(f"room PLC answered with Modbus exception code {code}{hint}")
            elif len(rr.registers) < STATUS_BLOCK_COUNT:
                self._set_link_fault(
                    f"room PLC status block has {len(rr.registers)} registers, "
                    f"expected {STATUS_BLOCK_COUNT}"
                )
            elif rr.registers[StatusRegister.MAP_VERSION] != REGISTER_MAP_VERSION:
                self._set_link_fault(
                    f"room PLC register map version {rr.registers[StatusRegister.MAP_VERSION]}, "
                    f"expected {REGISTER_MAP_VERSION}"
                )
            else:
                block = list(rr.registers[:STATUS_BLOCK_COUNT])
                # The staleness limit must span the wait until the next read too: a
                # read at the idle rate followed by a standby-length wait would
                # otherwise age out before the next one is even sent.
                self._on_status(block, sent, recv, max(interval, self.poll_interval_s))
                # the picture first, the observer after
                self._tapped("read", 0, block)

            next_at += self.poll_interval_s
            now = time.monotonic()
            next_at = max(next_at, now)  # late (loaded machine): do not burst to catch up
            if self._fresh_waiters:  # asked for during this read: the next one goes now
                next_at = now
            await self._sleep.sleep(next_at - now)  # set_poll_rate() may cut it short
            # Cut short (a faster rate, a fresh read asked for): the schedule starts
            # again from now, not from the slower rate's wake-up time.
            next_at = min(next_at, time.monotonic())

    # ---------------------------------------------------------------- writes
    async def _write_coils(self, first: str, values: list[bool]) -> None:
        client = self._client
        what = ", ".join(f"{COILS[_COIL_ADDRESS[first] + i]}={int(v)}" for i, v in enumerate(values))
        if client is None or not client.connected:
            raise PlcLinkError(f"room PLC {self.host}:{self.port} not connected; not written: {what}")
        self._tapped("write", _COIL_ADDRESS[first], [int(v) for v in values])
        try:
            if len(values) == 1:
                rr = await client.write_coil(
                    _COIL_ADDRESS[first], values[0], device_id=self._device_id
                )
            else:
                rr = await client.write_coils(
                    _COIL_ADDRESS[first], values, device_id=self._device_id
                )
        except ModbusException as exc:
            raise PlcLinkError(f"room PLC write failed ({what}): {_one_line(exc)}") from None
        if rr.isError():
            code = getattr(rr, "exception_code", "?")
            raise PlcWriteError(f"room PLC refused {what}: Modbus exception code {code}")


    def _tapped(self, kind: str, address: int, values: list[int]) -> None:
        tap = self.tap
        if tap is None:
            return
        try:
            tap(kind, address, values)
        except Exception:  # an observer's bug must not stop the polling
            log.exception("room PLC tap failed")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
