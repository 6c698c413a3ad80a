"""The faults a simulated room can be given: one table for the control API's `inject`,
the scenario runner and the fault campaign (tests/campaign/rig.py).

Each fault is one argument model (the `fault` key picks it) applied to the
real simulated device, so igrtd sees it over the real wire: an open
interlock on Modbus TCP, a couch FAULT or a lost frame on the serial link,
the kV imaging system dropping its socket. `apply(fault, couch, plc)` does it
synchronously on the devices' own loop (where their timestamps are taken) and
returns what the device said, so the campaign records exactly what it did
before the table existed; `inject` is the control API's async front end.
`clear_all` undoes every one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from safety.pose import ROTATION_AXES, Pose
from sim.validation import Strict

if TYPE_CHECKING:
    from sim.couch import SimCouchController
    from sim.plc import SimRoomPlc
    from sim.room_handle import RoomHandle

Axis = Literal["lat", "long", "vert", "yaw", "pitch", "roll"]
Interlock = Literal["door_closed", "estop_chain_ok", "collision_pads_clear",
                    "motion_enable_pressed", "imager_kv_source_parked", "imager_detector_parked"]
_ROOM_IDLE = ("door_closed", "estop_chain_ok", "collision_pads_clear")
_ARM_BITS = ("imager_kv_source_parked", "imager_detector_parked", "imager_kv_source_moving",
             "imager_detector_moving")
# Injected motion beyond these is not a fault a couch could show, only a typo.
_MAX_SPEED = {"mm": 50.0, "deg": 5.0}
_MAX_JUMP = {"mm": 100.0, "deg": 10.0}
_Seconds = Annotated[float, Field(gt=0.0, le=600.0, description="s, then the link is back")]
# A delay past a few seconds is a dead link, which the link-loss faults model.
_Delay = Annotated[float, Field(ge=0.0, le=5.0, description="s; 0 ends the delay")]
_Jump = Annotated[float, Field(ge=-100.0, le=100.0)]


class FaultError(ValueError):
    """The fault cannot be injected into this room (a device it needs is absent)."""


class CouchBusy(FaultError):
    """The couch is moving, so it cannot be put somewhere else by hand."""


def _unit(axis: str) -> str:
    return "deg" if axis in ROTATION_AXES else "mm"


class InterlockOpen(Strict):
    fault: Literal["interlock_open"]
    name: Interlock


class InterlockClose(Strict):
    fault: Literal["interlock_close"]
    name: Interlock


class InterlockPulse(Strict):
    fault: Literal["interlock_pulse"]
    name: Interlock
    seconds: float = Field(gt=0.0, le=60.0, description="open this long, timed on the PLC's "
                           "loop (one scan is 10 ms)")


class Estop(Strict):
    fault: Literal["estop"]


class PlcFaultCode(Strict):
    fault: Literal["plc_fault_code"]
    code: int = Field(ge=0, le=65535, description="register 2; 0 clears it")


class PlcHeartbeatFreeze(Strict):
    fault: Literal["plc_heartbeat_freeze"]
    frozen: bool = True


class PlcLinkLoss(Strict):
    fault: Literal["plc_link_loss"]
    seconds: _Seconds


class PlcDropConnections(Strict):
    fault: Literal["plc_drop_connections"]


class PlcDelay(Strict):
    fault: Literal["plc_delay"]
    seconds: _Delay


class PlcRawRegister(Strict):
    fault: Literal["plc_raw_register"]
    address: int = Field(ge=0, le=255, description="status register (the PLC checks its block)")
    value: int | None = Field(ge=0, le=65535, description="raw 16-bit word; null releases it")
    add_to_live: bool = Field(default=False, description="OR `value` into the register's live "
                              "word at injection (a reserved bit set on a real status)")


class CouchFault(Strict):
    fault: Literal["couch_fault"]
    code: Literal["heartbeat_lost", "following_error", "travel_limit", "internal"] = "internal"


class CouchRunaway(Strict):
    fault: Literal["couch_runaway"]
    axis: Axis
    speed: float = Field(description="signed, not 0, within +-50 mm/s or +-5 deg/s")

    @model_validator(mode="after")
    def _plausible(self) -> CouchRunaway:
        unit = _unit(self.axis)
        lim = _MAX_SPEED[unit]
        if self.speed == 0 or abs(self.speed) > lim:
            raise ValueError(f"speed {self.speed:g} {unit}/s on {self.axis} must be non-zero "
                             f"and within +-{lim:g} {unit}/s")
        return self


class CouchPoseJump(Strict):
    fault: Literal["couch_pose_jump"]
    axis: Axis
    delta: float = Field(description="signed, within +-100 mm or +-10 deg")

    @model_validator(mode="after")
    def _plausible(self) -> CouchPoseJump:
        unit = _unit(self.axis)
        lim = _MAX_JUMP[unit]
        if abs(self.delta) > lim:
            raise ValueError(f"delta {self.delta:g} {unit} on {self.axis} exceeds the limit "
                             f"+-{lim:g} {unit}")
        return self


class CouchMovedByHand(Strict):
    """The couch is really moved, without igrtd (a hand, a service jog): its true pose."""

    fault: Literal["couch_moved_by_hand"]
    lat: _Jump = 0.0
    long: _Jump = 0.0
    vert: _Jump = 0.0
    yaw: float = Field(default=0.0, ge=-10.0, le=10.0)
    pitch: float = Field(default=0.0, ge=-10.0, le=10.0)
    roll: float = Field(default=0.0, ge=-10.0, le=10.0)


class CouchDropFrames(Strict):
    fault: Literal["couch_drop_frames"]
    n: int = Field(ge=1, le=10_000)


class CouchCorruptFrames(Strict):
    fault: Literal["couch_corrupt_frames"]
    n: int = Field(ge=1, le=10_000)


class CouchLinkLoss(Strict):
    fault: Literal["couch_link_loss"]
    seconds: _Seconds


class CouchDelay(Strict):
    fault: Literal["couch_delay"]
    seconds: _Delay


class ImagerFailure(Strict):
    fault: Literal["imager_failure"]


DeviceFault = (InterlockOpen | InterlockClose | InterlockPulse | Estop | PlcFaultCode
               | PlcHeartbeatFreeze | PlcLinkLoss | PlcDropConnections | PlcDelay
               | PlcRawRegister | CouchFault | CouchRunaway | CouchPoseJump | CouchMovedByHand
               | CouchDropFrames | CouchCorruptFrames | CouchLinkLoss | CouchDelay)
Fault = Annotated[DeviceFault | ImagerFailure, Field(discriminator="fault")]


def _need_plc(plc: SimRoomPlc | None) -> SimRoomPlc:
    if plc is None:
        raise FaultError("this room has no PLC (plc: false in its description)")
    return plc


def _need_couch(couch: SimCouchController | None) -> SimCouchController:
    if couch is None:
        raise FaultError("the couch controller is not running")
    return couch


def _timed(seconds: float, timers: list[asyncio.TimerHandle] | None,
           fn: Callable[..., object], *args: object) -> None:
    handle = asyncio.get_running_loop().call_later(seconds, fn, *args)
    if timers is not None:
        timers.append(handle)


def _apply_plc(f: DeviceFault, plc: SimRoomPlc,
               timers: list[asyncio.TimerHandle] | None) -> object:
    if isinstance(f, InterlockOpen | InterlockClose):
        plc.set_input(f.name, isinstance(f, InterlockClose))
    elif isinstance(f, InterlockPulse):
        plc.set_input(f.name, False)
        _timed(f.seconds, timers, plc.set_input, f.name, True)
    elif isinstance(f, Estop):
        plc.press_estop()
    elif isinstance(f, PlcFaultCode):
        plc.set_fault_code(f.code)
    elif isinstance(f, PlcHeartbeatFreeze):
        plc.freeze_heartbeat(f.frozen)
    elif isinstance(f, PlcLinkLoss):
        plc.refuse_connections(True)
        _timed(f.seconds, timers, plc.refuse_connections, False)
    elif isinstance(f, PlcDropConnections):
        return plc.drop_connections()  # how many it closed: none while igrtd backs off
    elif isinstance(f, PlcDelay):
        plc.set_response_delay(f.seconds)
    elif isinstance(f, PlcRawRegister):
        raw = f.value
        if raw is not None and f.add_to_live:
            raw = plc.status_word() | raw
        plc.set_raw_register(f.address, raw)
        return (f.address, raw)
    return None


def _apply_couch(f: DeviceFault, couch: SimCouchController) -> object:
    if isinstance(f, CouchFault):
        couch.force_fault(f.code)
    elif isinstance(f, CouchRunaway):
        couch.inject_runaway(f.axis, f.speed)
    elif isinstance(f, CouchPoseJump):
        couch.inject_pose_jump(f.axis, f.delta)
    elif isinstance(f, CouchMovedByHand):
        if couch.is_moving:
            raise CouchBusy("the couch is moving; it cannot be moved by hand now")
        d = couch.pose.as_dict()
        for axis in d:
            delta = float(getattr(f, axis))
            if delta != 0.0:  # an axis not named keeps its exact value (and its -0.0)
                d[axis] += delta
        pose = Pose.from_dict(d)
        couch.set_pose(pose)
        return pose
    elif isinstance(f, CouchDropFrames):
        couch.drop_next_replies(f.n)
    elif isinstance(f, CouchCorruptFrames):
        couch.corrupt_next_replies(f.n)
    elif isinstance(f, CouchLinkLoss):
        couch.silence_link(f.seconds)
    elif isinstance(f, CouchDelay):
        couch.delay_replies(f.seconds)
    return None


_PLC_FAULTS = (InterlockOpen, InterlockClose, InterlockPulse, Estop, PlcFaultCode,
               PlcHeartbeatFreeze, PlcLinkLoss, PlcDropConnections, PlcDelay, PlcRawRegister)


def apply(f: DeviceFault, couch: SimCouchController | None, plc: SimRoomPlc | None, *,
          timers: list[asyncio.TimerHandle] | None = None) -> object:
    """Apply one device fault now, on the devices' loop; returns the device's answer
    (None for most; PLC connections closed, the register word set, the new couch pose).
    Timed faults (a pulse, a link loss) end by a timer on this loop, kept in `timers`."""
    if isinstance(f, _PLC_FAULTS):
        return _apply_plc(f, _need_plc(plc), timers)
    return _apply_couch(f, _need_couch(couch))


def _jsonable(value: object) -> object:
    if isinstance(value, Pose):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


async def inject(room: RoomHandle, f: Fault) -> dict[str, object]:
    """Apply one fault; returns what was done, for the caller's log."""
    if isinstance(f, ImagerFailure):
        if room.kv is None:
            raise FaultError("this room has no kV imager (kv_imager: false in its description)")
        await room.kv.close()
        return {"injected": f.model_dump()}
    result = apply(f, room.couch, room.plc, timers=room.timers)
    out: dict[str, object] = {"injected": f.model_dump()}
    if result is not None:
        out["result"] = _jsonable(result)
    return out


async def clear_all(room: RoomHandle) -> dict[str, object]:
    """Undo every injection: the idle room's inputs, a live PLC, a quiet couch link,
    the kV imager reconnected. The pendant is an operator's hand, not a fault: kept.
    A couch already in FAULT stays there: only igrtd's reset (RESET on the wire) clears it."""
    for handle in room.timers:
        handle.cancel()
    room.timers.clear()
    if room.couch is not None:
        room.couch.clear_injections()
    if room.plc is not None:
        plc = room.plc
        plc.refuse_connections(False)
        plc.freeze_heartbeat(False)
        plc.set_fault_code(0)
        plc.set_response_delay(0.0)
        plc.exception_responses(False)
        plc.clear_raw_registers()
        for name in _ARM_BITS:
            plc.release_input(name)
        for name in _ROOM_IDLE:
            plc.set_input(name, True)
    await room.reconnect_imager()
    return {"cleared": True}
