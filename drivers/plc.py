"""Room safety PLC over Modbus TCP: the host side of docs/protocols/room-plc.md.

The PLC owns the room's safety inputs (door, e-stop chain, collision pads,
hold-to-run, imager arms parked) and a few outputs (beam hold, motion-permit
lamp, imager arm drive commands). This module polls its status block, keeps a
fail-safe picture of the inputs and tells listeners the moment anything
changes. It decides nothing: the daemon's MotionGate does.

Fail-safe rules (see the protocol document for why):
- every interlock input is "closed = safe = 1"; a value the host cannot vouch
  for is reported open;
- the PLC heartbeat counter must be seen changing within `heartbeat_stale_s`
  (timed from when the request that saw it was *sent*, so a slow answer never
  counts as fresh); otherwise, or when the link is down, or when the PLC
  answers with a Modbus exception, every input is reported open.

Short openings (an input open for less than a host poll) reach the host as a
changed opening counter (registers 7-8): the driver reports the read before
alongside the current one (`PlcSnapshot.previous_registers`) and publishes
counter changes; judge_plc decides what they mean.

Register values are reported as read, never clamped (`PlcSnapshot.registers`,
with the documented ranges in `REGISTER_RANGES`): whether a fault code or a
value outside its range forbids motion is decided by safety.interlocks.judge_plc.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType, TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Register map (docs/protocols/room-plc.md). Addresses are 0-based protocol
# addresses as they appear on the wire.
# --------------------------------------------------------------------------

#: 2: registers 7-8, the opening counters, added (map version 1 had none).
REGISTER_MAP_VERSION = 2
DEFAULT_DEVICE_ID = 1

#: Interlock inputs, "closed = safe = 1". Bit n of the status word and
#: discrete input n carry INTERLOCK_INPUTS[n].
INTERLOCK_INPUTS: tuple[str, ...] = (
    "door_closed",
    "estop_chain_ok",
    "collision_pads_clear",
    "motion_enable_pressed",
    "imager_kv_source_parked",
    "imager_detector_parked",
)
#: Imager arms, in register order.
ARMS: tuple[str, ...] = ("kv_source", "detector")
#: Status (not interlock) bits following the interlock bits: 1 = arm moving.
MOVING_BITS: tuple[str, ...] = ("imager_kv_source_moving", "imager_detector_moving")
#: All bits of the status word / discrete inputs, bit n = STATUS_BITS[n].
STATUS_BITS: tuple[str, ...] = INTERLOCK_INPUTS + MOVING_BITS
#: Coils, coil n = COILS[n]; the output echo register uses the same bits.
COILS: tuple[str, ...] = ("beam_hold", "motion_permit_lamp", "kv_source_extend", "detector_extend")
#: Arm position registers count 0.1 % of full travel: 0 parked, 1000 extended.
POSITION_FULL_SCALE = 1000


class StatusRegister(IntEnum):
    """Holding registers 0..6: the status block read in one request per cycle."""

    STATUS_BITS = 0
    HEARTBEAT = 1
    FAULT_CODE = 2
    KV_SOURCE_POSITION = 3
    DETECTOR_POSITION = 4
    OUTPUT_ECHO = 5
    MAP_VERSION = 6
    ROOM_OPENINGS = 7
    ARM_OPENINGS = 8


STATUS_BLOCK_COUNT = len(StatusRegister)
#: Opening counters (docs/protocols/room-plc.md, "Short openings"): the PLC
#: counts every opening (1 -> 0) of each interlock input in a 4-bit field that
#: wraps 15 -> 0, so an opening that closed again before the host's next read is
#: still seen, as a changed count, in the same answer as the heartbeat.
OPENING_COUNTER_BITS = 4
OPENING_COUNTER_MASK = (1 << OPENING_COUNTER_BITS) - 1
#: input name -> (register, bit offset of its 4-bit opening counter).
OPENING_COUNTERS: Mapping[str, tuple[StatusRegister, int]] = MappingProxyType({
    name: (StatusRegister.ROOM_OPENINGS if i < 4 else StatusRegister.ARM_OPENINGS,
           OPENING_COUNTER_BITS * (i % 4))
    for i, name in enumerate(INTERLOCK_INPUTS)
})
#: The PLC program holds every opening of an interlock input visible on the
#: wire for at least this long (pulse stretching), so several host polls see
#: it even when they are late. A PLC guarantee the host does not rely on alone:
#: the opening counters catch what a late poll still misses.
MIN_OPEN_VISIBLE_S = 0.05
#: The inclusive range the register map documents for each status register.
#: The driver reports raw values and never clamps them; what a value outside
#: its range means is decided in safety.interlocks.judge_plc.
REGISTER_RANGES: Mapping[StatusRegister, tuple[int, int]] = MappingProxyType({
    StatusRegister.STATUS_BITS: (0, (1 << len(STATUS_BITS)) - 1),  # bits 8..15 reserved, read 0
    StatusRegister.HEARTBEAT: (0, 0xFFFF),
    StatusRegister.FAULT_CODE: (0, 0xFFFF),  # 0 = no fault, any other code is PLC-specific
    StatusRegister.KV_SOURCE_POSITION: (0, POSITION_FULL_SCALE),
    StatusRegister.DETECTOR_POSITION: (0, POSITION_FULL_SCALE),
    StatusRegister.OUTPUT_ECHO: (0, (1 << len(COILS)) - 1),  # bits 4..15 reserved, read 0
    StatusRegister.MAP_VERSION: (REGISTER_MAP_VERSION, REGISTER_MAP_VERSION),
    StatusRegister.ROOM_OPENINGS: (0, 0xFFFF),  # four 4-bit counters
    StatusRegister.ARM_OPENINGS: (0, 0xFF),  # two 4-bit counters; bits 8..15 reserved, read 0
})


def opening_count(registers: tuple[int, ...] | list[int], name: str) -> int:
    """The raw 4-bit opening counter of interlock input `name` in a status block."""
    reg, shift = OPENING_COUNTERS[name]
    return registers[reg] >> shift & OPENING_COUNTER_MASK
ARM_POSITION_REGISTERS: Mapping[str, StatusRegister] = MappingProxyType(
    dict(zip(ARMS, (StatusRegister.KV_SOURCE_POSITION, StatusRegister.DETECTOR_POSITION)))
)
_COIL_ADDRESS = {name: i for i, name in enumerate(COILS)}


class PlcError(Exception):
    """Base class of room PLC errors; str() is one line."""


class PlcLinkError(PlcError):
    """The PLC could not be reached (not connected, no answer in time)."""


class PlcWriteError(PlcError):
    """The PLC refused a write with a Modbus exception response."""


@dataclass(frozen=True, slots=True)
class InputState:
    """One interlock input as the host may rely on it."""

    closed: bool
    changed_at: float  # time.monotonic() when `closed` last changed


@dataclass(frozen=True, slots=True)
class PlcSnapshot:
    """Everything the host knows about the PLC at `taken_at` (monotonic s).

    When `link_ok` is False every input is open, every arm counts as moving
    and positions/outputs/fault code/registers are unknown (None): nothing
    stale can look safe. Values are reported as read, never clamped: an arm
    position register of 65535 is 6553.5 %, for safety.interlocks.judge_plc to
    refuse.
    """

    inputs: Mapping[str, InputState]
    arms_moving: Mapping[str, bool]
    arm_position_pct: Mapping[str, float | None]
    outputs: Mapping[str, bool | None]
    fault_code: int | None
    heartbeat: int | None
    heartbeat_age_s: float
    link_ok: bool
    link_reason: str
    read_at: float
    taken_at: float
    registers: tuple[int, ...] | None = None  # the raw status block, StatusRegister order
    # The raw block of the read before `registers` on the same link (None after a
    # connect or link fault): comparing the opening counters of the two shows an
    # opening that closed again between the reads.
    previous_registers: tuple[int, ...] | None = None

    def open_inputs(self) -> tuple[str, ...]:
        return tuple(name for name, state in self.inputs.items() if not state.closed)

    def all_closed(self) -> bool:
        return self.link_ok and not self.open_inputs()


Listener = Callable[[PlcSnapshot], None]
#: (previous block or None, block) -> a value that changes when what the block
#: means changes; see RoomPlcClient.set_change_key.
ChangeKey = Callable[[tuple[int, ...] | None, tuple[int, ...]], object]


@dataclass(slots=True)
class _Published:
    """The last state told to listeners; compared to decide whether to tell again."""

    link_ok: bool = False
    link_reason: str = "not connected yet"
    status_word: int | None = None
    fault_code: int | None = None
    output_word: int | None = None
    inputs: dict[str, InputState] = field(default_factory=dict)
    openings: tuple[int, ...] | None = None  # the opening counter registers
    block_key: object = None  # the change key of the block (see set_change_key)


def _check_config(host: str, port: int, poll_interval_s: float, idle_poll_interval_s: float,
                  heartbeat_stale_s: float, request_timeout_s: float, device_id: int) -> None:
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
    if heartbeat_stale_s < 4 * idle_poll_interval_s:
        raise ValueError(
            f"room PLC heartbeat staleness limit {heartbeat_stale_s} s is below 4 x the idle poll "
            f"interval ({4 * idle_poll_interval_s} s)"
        )
    if request_timeout_s <= 0:
        raise ValueError(f"room PLC request timeout {request_timeout_s} s must be > 0 s")


class RoomPlcClient:
    """Async context manager polling the room PLC and publishing interlock changes.

    `poll_interval_s` is the rate while motion may happen; `idle_poll_interval_s`
    (default: the same) is used while `set_fast_poll(False)`, so an idle daemon
    need not pay for 400 requests a second. Which rate applies is the daemon's
    decision.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        poll_interval_s: float = 0.0025,
        idle_poll_interval_s: float | None = None,
        heartbeat_stale_s: float = 0.1,
        request_timeout_s: float | None = None,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        device_id: int = DEFAULT_DEVICE_ID,
    ) -> None:
        idle = poll_interval_s if idle_poll_interval_s is None else idle_poll_interval_s
        # A request slower than the staleness limit can only deliver stale data.
        timeout = heartbeat_stale_s if request_timeout_s is None else request_timeout_s
        _check_config(host, port, poll_interval_s, idle, heartbeat_stale_s, timeout, device_id)
        self.host = host
        self.port = port
        self._fast_interval = poll_interval_s
        self._idle_interval = idle
        self._fast = True
        self._stale_s = heartbeat_stale_s
        self._timeout = timeout
        self._reconnect_min = reconnect_min_s
        self._reconnect_max = reconnect_max_s
        self._device_id = device_id
        self._stopping = False

        self._client: AsyncModbusTcpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._changed_event = asyncio.Event()  # replaced after each publish; waiters wake
        self._sleep_waiter: asyncio.Future[None] | None = None
        self._fresh_waiters: list[tuple[float, asyncio.Future[PlcSnapshot]]] = []
        self._watchdog: asyncio.TimerHandle | None = None

        # Raw view of the last good read; fail-safe state is derived from it.
        self._regs: list[int] | None = None
        self._prev_regs: list[int] | None = None  # the read before, on the same link
        self._change_key: ChangeKey | None = None
        self._block_key: object = None
        self._key_dirty = False
        self._last_counter: int | None = None
        self._fresh_at = -math.inf  # send time of the read that last saw the heartbeat change
        self._read_at = 0.0
        self._link_fault: str | None = "not connected yet"
        self._failures = 0
        self._published = _Published()
        now = time.monotonic()
        self._published.inputs = {n: InputState(False, now) for n in INTERLOCK_INPUTS}

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
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(snapshot)` on every change; it must be cheap and must not block."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def set_change_key(self, key: ChangeKey | None) -> None:
        """Also tell listeners whenever `key(previous block, block)` changes.

        The driver itself publishes changes of the inputs, link, fault code,
        output echo and opening counters. What else in the block matters (a
        register leaving its documented range, an arm position leaving parked)
        is the caller's judgement: it passes it in as `key`, evaluated only
        when the block (heartbeat aside) differs from the read before, so an
        idle PLC costs nothing and a travelling arm one call per change.
        """
        self._change_key = key
        self._key_dirty = True

    def snapshot(self) -> PlcSnapshot:
        """Current picture, fail-safe even if the event loop was late to notice staleness.

        If this call is the first to notice the heartbeat went stale, listeners
        are told (synchronously) before it returns.
        """
        now = time.monotonic()
        self._refresh(now)
        return self._build_snapshot(now)

    def set_fast_poll(self, fast: bool) -> None:
        """Poll at `poll_interval_s` (True) or `idle_poll_interval_s` (False)."""
        self._fast = fast
        if fast and self._sleep_waiter is not None and not self._sleep_waiter.done():
            self._sleep_waiter.set_result(None)  # cut an idle-length sleep short

    @property
    def heartbeat_stale_s(self) -> float:
        """The staleness limit this client applies to the PLC heartbeat."""
        return self._stale_s

    @property
    def poll_interval_s(self) -> float:
        return self._fast_interval if self._fast else self._idle_interval

    async def wait_until(self, predicate: Callable[[PlcSnapshot], bool],
                         timeout_s: float) -> PlcSnapshot:
        """Wait until `predicate(snapshot)` holds; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while True:
                snap = self.snapshot()
                if predicate(snap):
                    return snap
                await self._changed_event.wait()

    async def fresh_snapshot(self, timeout_s: float = 0.1) -> PlcSnapshot:
        """A snapshot built from a read *sent after* this call (nothing older counts)."""
        fut: asyncio.Future[PlcSnapshot] = asyncio.get_running_loop().create_future()
        entry = (time.monotonic(), fut)
        self._fresh_waiters.append(entry)
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
        loop = asyncio.get_running_loop()
        next_at = time.monotonic()
        while not self._stopping:
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
                self._set_link_fault(f"room PLC answered with Modbus exception code {code}")
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
                self._on_status(list(rr.registers[:STATUS_BLOCK_COUNT]), sent, recv)

            interval = self._fast_interval if self._fast else self._idle_interval
            next_at += interval
            now = time.monotonic()
            next_at = max(next_at, now)  # late (loaded machine): do not burst to catch up
            # A plain future + timer, as asyncio.sleep does, but one that
            # set_fast_poll() can resolve early.
            waiter: asyncio.Future[None] = loop.create_future()
            self._sleep_waiter = waiter
            handle = loop.call_at(loop.time() + (next_at - now), _resolve, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._sleep_waiter = None

    def _on_status(self, regs: list[int], sent: float, recv: float) -> None:
        counter = regs[StatusRegister.HEARTBEAT]
        if self._link_fault is not None:
            # A good answer clears a link fault, but inputs stay open until the
            # heartbeat is seen moving on this link (checked below).
            self._link_fault = None
        if (
            self._last_counter is not None
            and counter != self._last_counter
            and recv - sent < self._stale_s
        ):
            self._fresh_at = sent
            self._failures = 0  # a healthy link again: the next outage backs off from the start
            self._arm_watchdog()
        self._last_counter = counter
        prev = self._prev_regs = self._regs
        self._regs = regs
        key = self._change_key
        if key is not None:
            changed = prev is None or _without_heartbeat(prev) != _without_heartbeat(regs)
            if changed or self._key_dirty:
                # Re-evaluated on the read after a change too: the key of a pair of
                # reads (opening counters) goes back once both reads agree again.
                self._block_key = key(tuple(prev) if prev is not None else None, tuple(regs))
            self._key_dirty = changed
        self._read_at = recv
        self._refresh(recv)
        if self._fresh_waiters:
            snap = self._build_snapshot(recv)
            for entry in list(self._fresh_waiters):
                asked_at, fut = entry
                if asked_at <= sent and not fut.done():
                    fut.set_result(snap)
                    self._fresh_waiters.remove(entry)

    # ---------------------------------------------------------- fail-safe state
    def _set_link_fault(self, reason: str) -> None:
        if self._link_fault != reason:
            log.warning("room PLC link fault: %s", reason)
        self._link_fault = reason
        self._fresh_at = -math.inf
        self._last_counter = None
        self._regs = None
        self._prev_regs = None
        self._block_key = None
        self._key_dirty = True
        self._refresh(time.monotonic())

    def _link_state(self, now: float) -> tuple[bool, str]:
        if self._link_fault is not None:
            return False, self._link_fault
        age = now - self._fresh_at
        if age >= self._stale_s:
            if math.isinf(age):
                return False, "room PLC heartbeat not seen changing yet"
            # No live age in the text: the reason must not change while it stays true.
            return False, f"room PLC heartbeat stale: no change within {self._stale_s * 1000:.0f} ms"

        return True, ""

    def _refresh(self, now: float) -> None:
        """Recompute the fail-safe picture; publish if anything a listener cares about changed."""
        link_ok, reason = self._link_state(now)
        regs = self._regs if link_ok else None
        status_word = regs[StatusRegister.STATUS_BITS] if regs else None
        fault_code = regs[StatusRegister.FAULT_CODE] if regs else None
        output_word = regs[StatusRegister.OUTPUT_ECHO] if regs else None
        openings = (
            (regs[StatusRegister.ROOM_OPENINGS], regs[StatusRegister.ARM_OPENINGS])
            if regs else None
        )
        block_key = self._block_key if regs else None
        pub = self._published
        if (
            link_ok == pub.link_ok
            and status_word == pub.status_word
            and fault_code == pub.fault_code
            and output_word == pub.output_word
            and openings == pub.openings
            and block_key == pub.block_key
            and (link_ok or reason == pub.link_reason)
        ):
            return
        if link_ok != pub.link_ok:
            log.info("room PLC link %s%s", "ok" if link_ok else "NOT ok: ", reason)
        word = status_word or 0  # link down: every bit 0 = every input open
        inputs = dict(pub.inputs)
        for bit, name in enumerate(INTERLOCK_INPUTS):
            closed = bool(word >> bit & 1)
            if inputs[name].closed != closed:
                inputs[name] = InputState(closed, now)
        self._published = _Published(link_ok, reason, status_word, fault_code, output_word, inputs,
                                     openings, block_key)
        self._notify(self._build_snapshot(now))

    def _build_snapshot(self, now: float) -> PlcSnapshot:
        pub = self._published
        regs = self._regs if pub.link_ok else None
        if regs is not None:
            word = regs[StatusRegister.STATUS_BITS]
            moving = {
                arm: bool(word >> (len(INTERLOCK_INPUTS) + i) & 1) for i, arm in enumerate(ARMS)
            }
            positions: dict[str, float | None] = {
                arm: regs[reg] * 100.0 / POSITION_FULL_SCALE
                for arm, reg in ARM_POSITION_REGISTERS.items()
            }
            out = regs[StatusRegister.OUTPUT_ECHO]
            outputs: dict[str, bool | None] = {n: bool(out >> i & 1) for i, n in enumerate(COILS)}
            heartbeat: int | None = regs[StatusRegister.HEARTBEAT]
        else:
            moving = {arm: True for arm in ARMS}  # unknown counts as moving
            positions = {arm: None for arm in ARMS}
            outputs = {n: None for n in COILS}
            heartbeat = self._last_counter
        return PlcSnapshot(
            inputs=MappingProxyType(dict(pub.inputs)),
            arms_moving=MappingProxyType(moving),
            arm_position_pct=MappingProxyType(positions),
            outputs=MappingProxyType(outputs),
            fault_code=pub.fault_code,
            heartbeat=heartbeat,
            heartbeat_age_s=now - self._fresh_at,
            link_ok=pub.link_ok,
            link_reason=pub.link_reason,
            read_at=self._read_at,
            taken_at=now,
            registers=tuple(regs) if regs is not None else None,
            previous_registers=(
                tuple(self._prev_regs) if regs is not None and self._prev_regs is not None
                else None
            ),
        )

    def _notify(self, snap: PlcSnapshot) -> None:
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:  # one faulty listener must not starve the others
                log.exception("room PLC listener %r failed", listener)
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            delay = self._fresh_at + self._stale_s - time.monotonic()
            self._watchdog = loop.call_at(loop.time() + max(delay, 0.0), self._on_watchdog)

    def _on_watchdog(self) -> None:
        """Fires at most once per staleness period, so staleness is noticed even if a read hangs."""
        self._watchdog = None
        now = time.monotonic()
        if now - self._fresh_at >= self._stale_s:
            self._refresh(now)
        else:
            self._arm_watchdog()

    # ---------------------------------------------------------------- writes
    async def _write_coils(self, first: str, values: list[bool]) -> None:
        client = self._client
        what = ", ".join(f"{COILS[_COIL_ADDRESS[first] + i]}={int(v)}" for i, v in enumerate(values))
        if client is None or not client.connected:
            raise PlcLinkError(f"room PLC {self.host}:{self.port} not connected; not written: {what}")
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


def _without_heartbeat(regs: list[int]) -> list[int]:
    return regs[:StatusRegister.HEARTBEAT] + regs[StatusRegister.HEARTBEAT + 1:]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
