"""The room PLC as the RoomService sees it: interlocks, hold-to-run, arms.

Wraps drivers.plc.RoomPlcClient (which only reports what it reads) with the
daemon's reading of it:

* interlocks proper (door, e-stop chain, collision pads) plus the health of
  the link and of the PLC heartbeat: any of these open means no motion and
  stops motion in progress;
* the hold-to-run input (motion enable), required for the whole of a move;
* the imager arms' parked switches and moving bits, for the rule that the
  couch never moves unless both arms are parked and still.

The PLC is polled fast only while motion is possible (CONFIRMED, MOVING), so
an idle daemon costs little CPU.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from daemon.config import PlcConfig
from drivers.imager_arms import PARKED_INPUTS, ImagerArms
from drivers.plc import PlcSnapshot, RoomPlcClient

HOLD_TO_RUN = "motion_enable_pressed"
_ARM_INPUTS = frozenset(PARKED_INPUTS.values())
_OPEN_TEXT = {
    "door_closed": "door open",
    "estop_chain_ok": "emergency stop chain broken",
    "collision_pads_clear": "collision pad pressed",
}
FAST_STATES = frozenset({"CONFIRMED", "MOVING", "VERIFYING"})


class RoomInterlocks:
    def __init__(self, client: RoomPlcClient) -> None:
        self.client = client

    def add_listener(self, cb: Callable[[PlcSnapshot], None]) -> None:
        self.client.add_listener(cb)

    def snapshot(self) -> PlcSnapshot:
        return self.client.snapshot()

    def open_interlocks(self, snap: PlcSnapshot) -> list[str]:
        if not snap.link_ok:
            return [f"room PLC: {snap.link_reason}"]
        return [
            _OPEN_TEXT.get(name, f"{name} open")
            for name, state in snap.inputs.items()
            if not state.closed and name != HOLD_TO_RUN and name not in _ARM_INPUTS
        ]

    def motion_enable_pressed(self, snap: PlcSnapshot) -> bool:
        s = snap.inputs.get(HOLD_TO_RUN)
        return bool(snap.link_ok and s is not None and s.closed)

    def arms_state(self, snap: PlcSnapshot) -> tuple[bool, bool]:
        parked = snap.link_ok and all(snap.inputs[n].closed for n in _ARM_INPUTS)
        moving = (not snap.link_ok) or any(snap.arms_moving.values())
        return parked, moving

    def on_room_state(self, state: str) -> None:
        self.client.set_fast_poll(state in FAST_STATES)

    async def set_beam_hold(self, hold: bool) -> None:
        await self.client.set_beam_hold(hold)

    def describe(self) -> dict[str, Any]:
        snap = self.snapshot()
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
            "open": self.open_interlocks(snap),
            "motion_enable_pressed": self.motion_enable_pressed(snap),
        }


@contextlib.asynccontextmanager
async def open_plc(cfg: PlcConfig) -> AsyncIterator[tuple[RoomInterlocks, ImagerArms]]:
    client = RoomPlcClient(cfg.host, cfg.port, poll_interval_s=cfg.poll_interval_s,
                           idle_poll_interval_s=max(cfg.poll_interval_s, 0.02),
                           heartbeat_stale_s=cfg.heartbeat_stale_s)
    async with client:
        client.set_fast_poll(False)
        yield RoomInterlocks(client), ImagerArms(client)
