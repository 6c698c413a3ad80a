"""Room safety PLC over Modbus TCP: the host side of docs/protocols/room-plc.md.

The PLC owns the room's safety inputs (door, e-stop chain, collision pads,
hold-to-run, imager arms parked), reports the gantry angle (register 9, for
the collision model: `PlcSnapshot.gantry_deg`) and drives a few outputs (beam
hold, motion-permit lamp, imager arm drive commands). This module polls its
status block, keeps a fail-safe picture of the inputs and tells listeners the
moment anything changes. It decides nothing: the daemon's MotionGate does.

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

The driver is three modules, by responsibility; import from here:
- `drivers.plc_registers`: the register map (addresses, bits, documented ranges);
- `drivers.plc_picture`: the fail-safe picture decoded from the blocks read
  (`PlcSnapshot`), heartbeat freshness and change publication;
- `drivers.plc_client`: the Modbus TCP client, its polling and coil writes.
"""

from __future__ import annotations

from drivers.plc_client import PlcError, PlcLinkError, PlcWriteError, RoomPlcClient
from drivers.plc_picture import ChangeKey, InputState, Listener, PlcSnapshot
from drivers.plc_registers import (
    ARM_POSITION_REGISTERS,
    ARMS,
    COILS,
    DEFAULT_DEVICE_ID,
    GANTRY_COUNTS_PER_DEG,
    GANTRY_FULL_CIRCLE,
    INTERLOCK_INPUTS,
    MIN_OPEN_VISIBLE_S,
    MOVING_BITS,
    OPENING_COUNTER_BITS,
    OPENING_COUNTER_MASK,
    OPENING_COUNTERS,
    POSITION_FULL_SCALE,
    REGISTER_MAP_VERSION,
    REGISTER_RANGES,
    STATUS_BITS,
    STATUS_BLOCK_COUNT,
    StatusRegister,
    gantry_angle_deg,
    opening_count,
)

__all__ = [
    "ARMS",
    "ARM_POSITION_REGISTERS",
    "COILS",
    "DEFAULT_DEVICE_ID",
    "GANTRY_COUNTS_PER_DEG",
    "GANTRY_FULL_CIRCLE",
    "INTERLOCK_INPUTS",
    "MIN_OPEN_VISIBLE_S",
    "MOVING_BITS",
    "OPENING_COUNTERS",
    "OPENING_COUNTER_BITS",
    "OPENING_COUNTER_MASK",
    "POSITION_FULL_SCALE",
    "REGISTER_MAP_VERSION",
    "REGISTER_RANGES",
    "STATUS_BITS",
    "STATUS_BLOCK_COUNT",
    "ChangeKey",
    "InputState",
    "Listener",
    "PlcError",
    "PlcLinkError",
    "PlcSnapshot",
    "PlcWriteError",
    "RoomPlcClient",
    "StatusRegister",
    "gantry_angle_deg",
    "opening_count",
]
