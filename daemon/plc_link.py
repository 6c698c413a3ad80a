"""The room PLC as the RoomService sees it: interlocks, hold-to-run, arms.

Wraps drivers.plc.RoomPlcClient (which only reports what it reads) with the
daemon's reading of it:

* interlocks proper (door, e-stop chain, collision pads) plus the health of
  the link and of the PLC heartbeat, the PLC fault code and every register
  value's documented range: any of these open means no motion and stops
  motion in progress;
* the hold-to-run input (motion enable), required for the whole of a move;
* the imager arms' parked switches and moving bits, for the rule that the
  couch never moves unless both arms are parked and still.

The judgement itself is safety.interlocks.judge_plc (pure, one text table);
this module only turns the driver's snapshot into its input.

The PLC is polled fast only while motion is possible (CONFIRMED, MOVING), at
the idle rate while a session is open, and seldom in STANDBY with both arms
parked and still (no session: nothing can move before the room has passed
through a fast-rate state, and an arm command reads the PLC afresh first), so
an idle daemon costs little CPU. The driver stretches the heartbeat staleness
limit to four standby intervals while it polls at that rate.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping

from daemon.config import PlcConfig
from daemon.jsontypes import JsonObject
from daemon.workflow import STANDBY_STATES
from drivers.imager_arms import PARKED_INPUTS, ImagerArms
from drivers.plc import (
    ARM_POSITION_REGISTERS,
    ARMS,
    INTERLOCK_INPUTS,
    OPENING_COUNTER_MASK,
    OPENING_COUNTERS,
    REGISTER_RANGES,
    PlcSnapshot,
    RoomPlcClient,
    StatusRegister,
)
from drivers.plc_client import PollRate
from safety.interlocks import (
    MOTION_ENABLE_PRESSED,
    ArmReading,
    OpeningCounter,
    PlcReading,
    PlcVerdict,
    RegisterValue,
    judge_plc,
)

HOLD_TO_RUN = MOTION_ENABLE_PRESSED
_ARM_INPUTS = frozenset(PARKED_INPUTS.values())
#: Interlocks proper: everything on the status word but hold-to-run and the arms.
_INTERLOCKS = tuple(n for n in INTERLOCK_INPUTS if n != HOLD_TO_RUN and n not in _ARM_INPUTS)
_ARM_REGISTERS = frozenset(ARM_POSITION_REGISTERS.values())
FAST_STATES = frozenset({"CONFIRMED", "MOVING", "VERIFYING"})
#: One check asks for interlocks, arms and hold-to-run of the same snapshot in a
#: row; judging it once for all three keeps the 5 ms supervision cheap. Re-judged
#: after this long so a snapshot kept around still ages into "stale".
_VERDICT_REUSE_S = 0.001


def poll_rate(room_state: str, arms_parked_and_still: bool) -> PollRate:
    """How often to read the PLC in `room_state` (the one place that decides)."""
    if room_state in FAST_STATES:
        return "fast"
    if room_state in STANDBY_STATES and arms_parked_and_still:
        return "standby"
    return "idle"


class RoomInterlocks:
    def __init__(self, client: RoomPlcClient) -> None:
        self.client = client
        self._room_state = "OFFLINE"
        self._arms_still = False
        self._judged: tuple[PlcSnapshot, float, PlcVerdict] | None = None
        # Listeners hear every change of the verdict, not only input bits: a
        # register leaving its range must stop motion as fast as a door opening.
        client.set_change_key(block_verdict_key)
        client.add_listener(self._on_snapshot)

    def add_listener(self, cb: Callable[[PlcSnapshot], None]) -> None:
        self.client.add_listener(cb)

    def snapshot(self) -> PlcSnapshot:
        return self.client.snapshot()

    async def fresh_snapshot(self) -> PlcSnapshot:
        """A snapshot from a read *sent after* this call (listeners already told of it).

        For a check just before motion is sent: on a loaded host the last poll
        can be tens of milliseconds old, and an opening since then would not be
        in `snapshot()`. PlcLinkError if no answer comes within the staleness
        limit (then nothing may move anyway).
        """
        return await self.client.fresh_snapshot(self.client.heartbeat_stale_s)

    def verdict(self, snap: PlcSnapshot) -> PlcVerdict:
        """The snapshot judged by the one room PLC rule (safety.interlocks.judge_plc)."""
        now = time.monotonic()
        judged = self._judged
        if judged is not None and judged[0] is snap and 0 <= now - judged[1] <= _VERDICT_REUSE_S:
            return judged[2]
        verdict = judge_plc(plc_reading(snap), now, self.client.heartbeat_stale_s)
        self._judged = (snap, now, verdict)
        return verdict

    def open_interlocks(self, snap: PlcSnapshot) -> list[str]:
        """Stop conditions: interlocks proper, link and heartbeat, fault code, value ranges."""
        return list(self.verdict(snap).open_interlocks)

    def motion_enable_pressed(self, snap: PlcSnapshot) -> bool:
        return self.verdict(snap).motion_enable_pressed

    def arms_state(self, snap: PlcSnapshot) -> tuple[bool, bool]:
        """(both arms parked, any arm moving or not vouched for)."""
        v = self.verdict(snap)
        return v.imager_arms_parked, v.imager_arms_moving

    def on_room_state(self, state: str) -> None:
        self._room_state = state
        self.client.set_poll_rate(poll_rate(state, self._arms_still))

    def _on_snapshot(self, snap: PlcSnapshot) -> None:
        parked, moving = self.arms_state(snap)
        still = parked and not moving
        if still != self._arms_still:
            self._arms_still = still
            self.client.set_poll_rate(poll_rate(self._room_state, still))

    async def set_beam_hold(self, hold: bool) -> None:
        await self.client.set_beam_hold(hold)

    @property
    def poll_interval_s(self) -> float:
        """The PLC poll period now in force (diagnostics reports it)."""
        return self.client.poll_interval_s

    def describe(self) -> JsonObject:
        snap = self.snapshot()
        verdict = self.verdict(snap)
        now = time.monotonic()
        return {
            "monitored": True,
            "link_ok": snap.link_ok,
            "link_reason": snap.link_reason,
            "heartbeat": snap.heartbeat,
            "heartbeat_age_s": round(snap.heartbeat_age_s, 4),
            "fault_code": snap.fault_code,
            "inputs": [
                {"name": name, "closed": st.closed, "age_s": round(now - st.changed_at, 3)}
                for name, st in snap.inputs.items()
            ],
            "arms_moving": dict(snap.arms_moving),
            "arm_position_pct": dict(snap.arm_position_pct),
            "gantry_deg": snap.gantry_deg,
            "outputs": dict(snap.outputs),
            "open": list(verdict.open_interlocks),
            "motion_enable_pressed": verdict.motion_enable_pressed,
            "imager_arms_parked": verdict.imager_arms_parked,
            "imager_arms_not_parked": list(verdict.arm_reasons),
        }


def block_verdict_key(previous: tuple[int, ...] | None, regs: tuple[int, ...]) -> object:
    """What a status block (after `previous`) means for motion, as a comparable value.

    The driver calls listeners when this changes (RoomPlcClient.set_change_key):
    the block judged as if just read on a healthy link, so only what the block
    says counts here (link health and staleness reach listeners on their own).
    """
    closed = {name: bool(regs[StatusRegister.STATUS_BITS] >> bit & 1)
              for bit, name in enumerate(INTERLOCK_INPUTS)}
    moving = {arm: bool(regs[StatusRegister.STATUS_BITS] >> (len(INTERLOCK_INPUTS) + i) & 1)
              for i, arm in enumerate(ARMS)}
    reading = _block_reading(regs, previous, closed, moving, True, "", 0.0, 0.0, 0.0)
    v = judge_plc(reading, 0.0, 1.0)
    return (v.open_interlocks, v.motion_enable_pressed, v.imager_arms_parked,
            v.imager_arms_moving)


def plc_reading(snap: PlcSnapshot) -> PlcReading:
    """The driver's snapshot as the input of safety.interlocks.judge_plc: raw values with
    the ranges the register map documents, nothing decided yet."""
    regs = snap.registers if snap.link_ok else None
    return _block_reading(
        regs, snap.previous_registers, {name: st.closed for name, st in snap.inputs.items()},
        snap.arms_moving, snap.link_ok and regs is not None,
        snap.link_reason or "no status block read", snap.taken_at,
        snap.taken_at - snap.read_at if snap.read_at else math.inf, snap.heartbeat_age_s,
    )


def _block_reading(
    regs: tuple[int, ...] | None, previous: tuple[int, ...] | None,
    closed: Mapping[str, bool], moving: Mapping[str, bool], link_ok: bool, link_reason: str,
    taken_at: float, read_age_s: float, heartbeat_age_s: float,
) -> PlcReading:
    def value(reg: StatusRegister) -> RegisterValue | None:
        if regs is None or len(regs) <= reg:
            return None
        low, high = REGISTER_RANGES[reg]
        return RegisterValue(int(reg), regs[reg], low, high)

    def counter(name: str) -> OpeningCounter | None:
        reg, shift = OPENING_COUNTERS[name]
        if regs is None or len(regs) <= reg:
            return None
        before = previous[reg] >> shift & OPENING_COUNTER_MASK if (
            previous is not None and len(previous) > reg) else None
        return OpeningCounter(name, int(reg), before, regs[reg] >> shift & OPENING_COUNTER_MASK,
                              OPENING_COUNTER_MASK + 1)

    others = tuple(
        v for reg in StatusRegister
        if reg not in _ARM_REGISTERS
        and reg not in (StatusRegister.FAULT_CODE, StatusRegister.GANTRY_ANGLE)
        and (v := value(reg)) is not None
    )
    return PlcReading(
        link_ok=link_ok,
        link_reason=link_reason,
        taken_at=taken_at,
        read_age_s=read_age_s,
        heartbeat_age_s=heartbeat_age_s,
        interlocks={name: closed[name] for name in _INTERLOCKS},
        motion_enable_pressed=closed[HOLD_TO_RUN],
        arms=tuple(
            ArmReading(arm, closed[PARKED_INPUTS[arm]], bool(moving.get(arm, True)),
                       value(ARM_POSITION_REGISTERS[arm]), counter(PARKED_INPUTS[arm]))
            for arm in ARMS
        ),
        fault_code=value(StatusRegister.FAULT_CODE),
        registers=others,
        openings=tuple(c for name in (*_INTERLOCKS, HOLD_TO_RUN)
                       if (c := counter(name)) is not None),
        gantry_angle=value(StatusRegister.GANTRY_ANGLE),
    )


@contextlib.asynccontextmanager
async def open_plc(cfg: PlcConfig) -> AsyncIterator[tuple[RoomInterlocks, ImagerArms]]:
    client = RoomPlcClient(cfg.host, cfg.port, poll_interval_s=cfg.poll_interval_s,
                           idle_poll_interval_s=cfg.idle_poll_interval_s,
                           standby_poll_interval_s=cfg.standby_poll_interval_s,
                           heartbeat_stale_s=cfg.heartbeat_stale_s)
    async with client:
        client.set_poll_rate("idle")
        yield RoomInterlocks(client), ImagerArms(client)
