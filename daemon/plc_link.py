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

The PLC is polled fast only while motion is possible (CONFIRMED, MOVING), so
an idle daemon costs little CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from daemon.config import PlcConfig
from drivers.imager_arms import PARKED_INPUTS, ImagerArms
from drivers.plc import (
    ARM_POSITION_REGISTERS,
    ARMS,
    INTERLOCK_INPUTS,
    REGISTER_RANGES,
    PlcSnapshot,
    RoomPlcClient,
    StatusRegister,
)
from safety.interlocks import (
    MOTION_ENABLE_PRESSED,
    ArmReading,
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


class RoomInterlocks:
    def __init__(self, client: RoomPlcClient) -> None:
        self.client = client
        self._judged: tuple[PlcSnapshot, float, PlcVerdict] | None = None

    def add_listener(self, cb: Callable[[PlcSnapshot], None]) -> None:
        self.client.add_listener(cb)

    def snapshot(self) -> PlcSnapshot:
        return self.client.snapshot()

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
        self.client.set_fast_poll(state in FAST_STATES)

    async def set_beam_hold(self, hold: bool) -> None:
        await self.client.set_beam_hold(hold)

    def describe(self) -> dict[str, Any]:
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
            "outputs": dict(snap.outputs),
            "open": list(verdict.open_interlocks),
            "motion_enable_pressed": verdict.motion_enable_pressed,
            "imager_arms_parked": verdict.imager_arms_parked,
            "imager_arms_not_parked": list(verdict.arm_reasons),
        }


def plc_reading(snap: PlcSnapshot) -> PlcReading:
    """The driver's snapshot as the input of safety.interlocks.judge_plc: raw values with
    the ranges the register map documents, nothing decided yet."""
    regs = snap.registers if snap.link_ok else None

    def value(reg: StatusRegister) -> RegisterValue | None:
        if regs is None or len(regs) <= reg:
            return None
        low, high = REGISTER_RANGES[reg]
        return RegisterValue(int(reg), regs[reg], low, high)

    others = tuple(
        v for reg in StatusRegister
        if reg not in _ARM_REGISTERS and reg != StatusRegister.FAULT_CODE
        and (v := value(reg)) is not None
    )
    return PlcReading(
        link_ok=snap.link_ok and regs is not None,
        link_reason=snap.link_reason or "no status block read",
        taken_at=snap.taken_at,
        read_age_s=snap.taken_at - snap.read_at if snap.read_at else math.inf,
        heartbeat_age_s=snap.heartbeat_age_s,
        interlocks={name: snap.inputs[name].closed for name in _INTERLOCKS},
        motion_enable_pressed=snap.inputs[HOLD_TO_RUN].closed,
        arms=tuple(
            ArmReading(arm, snap.inputs[PARKED_INPUTS[arm]].closed,
                       bool(snap.arms_moving.get(arm, True)), value(ARM_POSITION_REGISTERS[arm]))
            for arm in ARMS
        ),
        fault_code=value(StatusRegister.FAULT_CODE),
        registers=others,
    )


@contextlib.asynccontextmanager
async def open_plc(cfg: PlcConfig) -> AsyncIterator[tuple[RoomInterlocks, ImagerArms]]:
    client = RoomPlcClient(cfg.host, cfg.port, poll_interval_s=cfg.poll_interval_s,
                           idle_poll_interval_s=max(cfg.poll_interval_s, 0.02),
                           heartbeat_stale_s=cfg.heartbeat_stale_s)
    async with client:
        client.set_fast_poll(False)
        yield RoomInterlocks(client), ImagerArms(client)
