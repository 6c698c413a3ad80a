"""The fail-safe picture of the room PLC, built from the status blocks the client reads.

Decodes each block into a `PlcSnapshot`, judges the link by the heartbeat
(timed from when the request that saw it was *sent*) and tells listeners the
moment anything they care about changes. No I/O: `drivers.plc_client` reads the
blocks and hands them in (`_on_status`, `_set_link_fault`); keeping the picture
apart from the polling keeps the fail-safe rules in one place
(docs/protocols/room-plc.md; summary in `drivers.plc`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from drivers.plc_registers import (
    ARM_POSITION_REGISTERS,
    ARMS,
    COILS,
    INTERLOCK_INPUTS,
    POSITION_FULL_SCALE,
    StatusRegister,
    gantry_angle_deg,
)

# The logger keeps the name it had before the driver was split into modules, so
# log filters and what operators grep for stay the same.
log = logging.getLogger("drivers.plc")

# A staleness limit spans at least this many poll intervals: one late or lost
# answer must not make a healthy PLC read as stale.
STALE_POLL_CYCLES = 4
# A snapshot asked for again within this long, nothing read or changed since, is the
# same snapshot (PlcPicture.snapshot).
SNAPSHOT_REUSE_S = 0.001


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
    refuse. The gantry angle is the one decoded value that is None instead
    when its register is outside 0..35999 (an angle no one can vouch for is
    not an angle: there is no "6553.5 %" of a circle); the raw value is in
    `registers`.
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
    # IEC 61217 gantry angle in degrees, 0 <= angle < 360 (register 9 / 100); None
    # when unknown: link down, heartbeat stale, or the register out of range.
    gantry_deg: float | None = None

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


@dataclass(frozen=True, slots=True)
class _BuiltSnapshot:
    """The last snapshot built, and what it was built from (PlcPicture.snapshot)."""

    snapshot: PlcSnapshot
    built_at: float
    published: _Published
    regs: list[int] | None
    fresh_at: float
    read_at: float
    stale_s: float


class PlcPicture:
    """What the host may rely on about the PLC, derived from the last reads.

    Base of `RoomPlcClient`, which feeds it; all state lives here so the
    snapshot, the staleness watchdog and the listeners see one consistent view.
    """

    def __init__(self, heartbeat_stale_s: float) -> None:
        self._configured_stale_s = heartbeat_stale_s
        # In force: the configured limit, or STALE_POLL_CYCLES of a slower poll (a
        # standby room polls seldom; a limit shorter than its interval would read
        # a healthy PLC as stale between reads). Set by the read that shows it.
        self._stale_s = heartbeat_stale_s
        self._listeners: list[Listener] = []
        self._changed_event = asyncio.Event()  # replaced after each publish; waiters wake
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
        self._failures = 0  # link failures in a row; the client's reconnect back-off
        self._published = _Published()
        self._last_snapshot: _BuiltSnapshot | None = None
        now = time.monotonic()
        self._published.inputs = {n: InputState(False, now) for n in INTERLOCK_INPUTS}

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
        # The way to a GO asks three times in a row (the motion rule's facts, the
        # collision model's room, the gate's second look): one snapshot built and
        # judged for all of them (daemon.plc_link's verdict is kept per snapshot)
        # instead of three, 0.1-0.2 ms each (issue 13, item 6). Never across a read,
        # a published change or a new staleness limit, and never older than 1 ms,
        # as the verdict's own reuse, so a snapshot kept around still ages.
        cached = self._last_snapshot
        if (cached is not None and cached.published is self._published
                and cached.regs is self._regs and cached.fresh_at == self._fresh_at
                and cached.read_at == self._read_at and cached.stale_s == self._stale_s
                and 0 <= now - cached.built_at <= SNAPSHOT_REUSE_S):
            return cached.snapshot
        snap = self._build_snapshot(now)
        self._last_snapshot = _BuiltSnapshot(snap, now, self._published, self._regs,
                                             self._fresh_at, self._read_at, self._stale_s)
        return snap

    @property
    def heartbeat_stale_s(self) -> float:
        """The staleness limit in force for the PLC heartbeat: the configured one,
        longer only while the client polls slower than a quarter of it."""
        return self._stale_s

    @property
    def configured_stale_s(self) -> float:
        """The staleness limit while polling at the idle or motion rate."""
        return self._configured_stale_s

    async def wait_until(self, predicate: Callable[[PlcSnapshot], bool],
                         timeout_s: float) -> PlcSnapshot:
        """Wait until `predicate(snapshot)` holds; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while True:
                snap = self.snapshot()
                if predicate(snap):
                    return snap
                await self._changed_event.wait()

    # ------------------------------------------------------------- reads in
    def _on_status(self, regs: list[int], sent: float, recv: float,
                   interval_s: float | None = None) -> None:
        """A good read, sent at `sent`; `interval_s` is the longer of the interval it
        was taken at and the wait before the next read (None: the configured
        staleness limit applies whatever the rate)."""
        self._set_stale_limit(interval_s)
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

    def _extend_stale_limit(self, interval_s: float) -> None:
        """At least STALE_POLL_CYCLES of `interval_s` from now on (a slower rate)."""
        if STALE_POLL_CYCLES * interval_s > self._stale_s:
            self._set_stale_limit(interval_s)

    def _set_stale_limit(self, interval_s: float | None) -> None:
        """The limit for a read taken at `interval_s`: it changes with the read that
        first shows the new rate, so a switch to a faster rate cannot judge the
        last slow read by the short limit (a false 'stale' before the next read)."""
        limit = self._configured_stale_s
        if interval_s is not None:
            limit = max(limit, STALE_POLL_CYCLES * interval_s)
        if limit == self._stale_s:
            return
        self._stale_s = limit
        if self._watchdog is not None:  # armed for the old limit: re-arm for this one
            self._watchdog.cancel()
            self._watchdog = None
            self._arm_watchdog()

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
            gantry = gantry_angle_deg(regs)
        else:
            moving = {arm: True for arm in ARMS}  # unknown counts as moving
            positions = {arm: None for arm in ARMS}
            outputs = {n: None for n in COILS}
            heartbeat = self._last_counter
            gantry = None
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
            gantry_deg=gantry,
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


def _without_heartbeat(regs: list[int]) -> list[int]:
    return regs[:StatusRegister.HEARTBEAT] + regs[StatusRegister.HEARTBEAT + 1:]
