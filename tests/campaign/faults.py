"""The campaign's named faults, each a fault of the simulator's one fault table
(sim/control_faults.py, also the control API's `inject`): kind -> the fault for
the scenario's value. The devices' calls, values and answers are the table's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from sim import control_faults as cf

# Kept for the campaign's report: no campaign fault is unavailable now that each is
# a fault of the simulator's table, but a hook a tree lacks is recorded as this.
UNAVAILABLE = "unavailable"

def _interlock(name: cf.Interlock) -> Callable[[Any], cf.DeviceFault]:
    return lambda closed: (cf.InterlockClose(fault="interlock_close", name=name) if closed
                           else cf.InterlockOpen(fault="interlock_open", name=name))


def _raw_register(value: Any) -> cf.DeviceFault:
    addr, raw = value
    if raw is not None and raw < 0:  # a reserved status bit added to the live word
        return cf.PlcRawRegister(fault="plc_raw_register", address=addr, value=-raw,
                                 add_to_live=True)
    return cf.PlcRawRegister(fault="plc_raw_register", address=addr, value=raw)


FAULTS: dict[str, Callable[[Any], cf.DeviceFault]] = {
    **{name: _interlock(name) for name in get_args(cf.Interlock)},
    "plc_drop": lambda _: cf.PlcDropConnections(fault="plc_drop_connections"),
    "plc_heartbeat_frozen": lambda frozen: cf.PlcHeartbeatFreeze(
        fault="plc_heartbeat_freeze", frozen=bool(frozen)),
    "plc_delay": lambda s: cf.PlcDelay(fault="plc_delay", seconds=float(s)),
    "couch_silence": lambda s: cf.CouchLinkLoss(fault="couch_link_loss", seconds=float(s)),
    "couch_delay": lambda s: cf.CouchDelay(fault="couch_delay", seconds=float(s)),
    "interlock_pulse": lambda v: cf.InterlockPulse(fault="interlock_pulse", name=v[0],
                                                   seconds=float(v[1])),
    "plc_fault_code": lambda code: cf.PlcFaultCode(fault="plc_fault_code", code=int(code)),
    "plc_raw_register": _raw_register,
    "runaway": lambda v: cf.CouchRunaway(fault="couch_runaway", axis=v[0], speed=float(v[1])),
    "pose_jump": lambda v: cf.CouchPoseJump(fault="couch_pose_jump", axis=v[0],
                                            delta=float(v[1])),
    "set_pose": lambda v: cf.CouchMovedByHand(
        fault="couch_moved_by_hand", **{axis: float(d) for axis, d in dict(v).items()}),
}


def _action(make: Callable[[Any], cf.DeviceFault]) -> Callable[[Any, Any, Any], Any]:
    def act(couch: Any, plc: Any, value: Any) -> Any:
        try:
            return cf.apply(make(value), couch, plc)
        except cf.CouchBusy:  # moving the couch by hand is refused while it moves
            return "refused: moving"
    return act


# Named faults: (couch, plc, value) -> recorded value or None, run on the simulator loop.
ACTIONS: dict[str, Callable[[Any, Any, Any], Any]] = {
    kind: _action(make) for kind, make in FAULTS.items()}
